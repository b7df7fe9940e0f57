"""Request validation of the simulator's OpenAI API against vLLM 0.33.0 (pure parts).

Expected messages, types and params are copied from vLLM 0.33.0's source (paths in each row's
comment, under vllm/), not from the simulator: sampling_params.py `_verify_args`, the
`mode="before"` validators of entrypoints/openai/{completion,chat_completion}/protocol.py,
renderers/params.py, serve/exception_handling/handlers/validation.py.
"""

from __future__ import annotations

import pytest

from kiban_serving.sim.protocol import ApiError, find_stop, parse_generation_request
from kiban_serving.sim.tokens import (
    block_hashes,
    count_chat_tokens,
    count_prompt_tokens,
    detokenize,
    placeholder_prompt,
    placeholder_text,
    placeholder_token,
    text_token_ids,
)


def parse(body, chat=False, max_model_len=100):
    return parse_generation_request(body, chat=chat, served_model_names=["m", "alias"], max_model_len=max_model_len)


def test_one_word_is_one_token_and_ids_round_trip():
    assert count_prompt_tokens(placeholder_prompt(37)) == 37
    assert count_prompt_tokens([1, 2, 3]) == 3
    assert count_prompt_tokens(["a b"]) == 2
    assert len(placeholder_text(9).split()) == 9
    assert count_chat_tokens([{"role": "user", "content": [{"type": "text", "text": "a b c"}]}]) == 3
    assert detokenize(text_token_ids("hi lorem tok5000")) == "hi lorem tok5000"


def test_block_hashes_chain_full_blocks_only():
    ids = list(range(40))
    hashes = block_hashes(ids, 16)
    assert len(hashes) == 2  # 40 tokens: two full blocks of 16, the last 8 are not hashed
    assert block_hashes(ids[:32] + [99] * 8, 16) == hashes  # only full blocks count
    assert block_hashes([7] + ids[1:], 16)[1] != hashes[1]  # a change in block 0 changes every later hash
    assert block_hashes(ids, 16, b"salt")[0] != hashes[0]


def test_defaults_follow_vllm():
    parsed = parse({"model": "m", "prompt": "a b c"})
    # completions max_tokens defaults to 16 (completion/protocol.py), not the remaining context
    assert parsed.prompts[0].max_tokens == 16 and parsed.n == 1 and not parsed.stream
    assert parse({"prompt": "a", "max_tokens": None}).prompts[0].max_tokens == 16  # normalize_null_max_tokens
    # lax pydantic: "5" is an int
    assert parse({"prompt": "a", "max_tokens": "5"}).prompts[0].max_tokens == 5
    # chat without a limit: the rest of the context; max_completion_tokens wins over max_tokens
    chat = parse({"messages": [{"role": "user", "content": "x y"}]}, chat=True)
    assert chat.prompts[0].max_tokens == 98
    chat = parse({"messages": [{"role": "user", "content": "x y"}], "max_tokens": 9, "max_completion_tokens": 5,
                  "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}, chat=True)
    assert (chat.prompts[0].max_tokens, chat.stream, chat.include_usage, chat.ignore_eos) == (5, True, True, True)


def test_more_than_the_context_leaves_is_clamped_not_refused():
    """api_utils.get_max_tokens: min(max_model_len - prompt, requested)."""
    parsed = parse({"prompt": "a b", "max_tokens": 99})
    assert parsed.prompts[0].max_tokens == 98


def test_batch_prompts_and_n():
    parsed = parse({"prompt": ["a b", "c d e"], "n": 3, "temperature": 0.8, "max_tokens": 4})
    assert [len(p.token_ids) for p in parsed.prompts] == [2, 3] and parsed.n == 3
    assert parse({"prompt": [[1, 2], [3]]}).prompts[1].token_ids == (3,)


def test_logprobs_over_the_bound_are_deferred_to_generate():
    parsed = parse({"prompt": "a", "logprobs": 21})
    assert parsed.deferred_error is not None
    assert parsed.deferred_error.message == \
        "Requested sample logprobs of 21, which is greater than max allowed: 20 (parameter=logprobs, value=21)"
    chat = parse({"messages": [{"role": "user", "content": "a"}], "logprobs": True, "top_logprobs": 25}, chat=True)
    assert chat.deferred_error.param == "logprobs"  # the bound names `logprobs` for chat too
    assert parse({"prompt": "a", "logprobs": 20}).deferred_error is None


@pytest.mark.parametrize(
    ("body", "chat", "status", "kind", "param", "message"),
    [
        # serve/engine/serving.py _check_model
        ({"model": "other", "prompt": "a"}, False, 404, "NotFoundError", "model",
         "The model `other` does not exist. Valid aliases: m, alias."),
        # completion/protocol.py validate_prompt_and_prompt_embeds
        ({"model": "m"}, False, 400, "BadRequestError", "prompt",
         "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)"),
        ({"prompt": ""}, False, 400, "BadRequestError", "prompt",
         "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)"),
        # sampling_params.py _verify_args
        ({"prompt": "a", "temperature": -1}, False, 400, "BadRequestError", "temperature",
         "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)"),
        ({"prompt": "a", "temperature": 2.5}, False, 400, "BadRequestError", "temperature",
         "temperature must be in [0, 2], got 2.5. (parameter=temperature, value=2.5)"),
        ({"prompt": "a", "top_p": 2}, False, 400, "BadRequestError", "top_p",
         "top_p must be in (0, 1], got 2.0. (parameter=top_p, value=2.0)"),
        ({"prompt": "a", "top_k": -2}, False, 400, "BadRequestError", None,
         "top_k must be 0 (disable), or at least 1, got -2."),
        ({"prompt": "a", "presence_penalty": 3}, False, 400, "BadRequestError", None,
         "presence_penalty must be in [-2, 2], got 3.0."),
        ({"prompt": "a", "min_p": 1.5}, False, 400, "BadRequestError", None, "min_p must be in [0, 1], got 1.5."),
        ({"prompt": "a", "repetition_penalty": 0}, False, 400, "BadRequestError", None,
         "repetition_penalty must be greater than zero, got 0.0."),
        ({"prompt": "a", "max_tokens": 5, "min_tokens": 6}, False, 400, "BadRequestError", None,
         "min_tokens must be less than or equal to max_tokens=5, got 6."),
        ({"prompt": "a", "n": 0}, False, 400, "BadRequestError", None, "n must be at least 1, got 0."),
        ({"prompt": "a", "n": 2, "temperature": 0}, False, 400, "BadRequestError", None,
         "n must be 1 when using greedy sampling, got 2."),
        ({"prompt": "a", "stop": [""]}, False, 400, "BadRequestError", None, "stop cannot contain an empty string."),
        ({"prompt": "a", "max_tokens": 0}, False, 400, "BadRequestError", "max_tokens",
         "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"),
        # renderers/params.py
        ({"prompt": "a", "max_tokens": 101}, False, 400, "BadRequestError", "max_tokens",
         "max_tokens=101 cannot be greater than max_model_len=100. Please request fewer output tokens. "
         "(parameter=max_tokens, value=101)"),
        ({"prompt": "a " * 150}, False, 400, "BadRequestError", "input_tokens",
         "This model's maximum context length is 100 tokens. However, your prompt contains at least 101 input "
         "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
         "prompt. (parameter=input_tokens, value=101)"),
        # the before-validators
        ({"prompt": "a", "stream_options": {"include_usage": True}}, False, 400, "BadRequestError", "stream_options",
         "Stream options can only be defined when `stream=True`. (parameter=stream_options)"),
        ({"prompt": "a", "logprobs": -2}, False, 400, "BadRequestError", "logprobs",
         "`logprobs` must be a positive value or -1. (parameter=logprobs, value=-2)"),
        ({"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}, True, 400, "BadRequestError",
         "top_logprobs", "when using `top_logprobs`, `logprobs` must be set to true. (parameter=top_logprobs)"),
        ({"prompt": "a", "echo": True, "suffix": "x"}, False, 400, "BadRequestError", "suffix",
         "Echo is unsupported with suffix. (parameter=suffix)"),
        # pydantic type errors, formatted by validation_exception_handler
        ({"prompt": "a", "max_tokens": "abc"}, False, 400, "Bad Request", "body.max_tokens",
         "1 validation error:\n  {'type': 'int_parsing', 'loc': 'body.max_tokens', 'msg': 'Input should be a "
         "valid integer, unable to parse string as an integer', 'input': 'abc'}"),
        ({"model": "m"}, True, 400, "Bad Request", "body.messages",
         "1 validation error:\n  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
         "'input': '<dict of 1 items>'}"),  # containers are summarised (_summarize_error_input)
    ],
)
def test_bad_requests_get_vllms_error(body, chat, status, kind, param, message):
    with pytest.raises(ApiError) as info:
        parse(body, chat)
    error = info.value
    assert (error.status, error.kind, error.param) == (status, kind, param)
    assert error.message == message


def test_five_stop_strings_are_a_pydantic_400_naming_stop():
    with pytest.raises(ApiError) as info:
        parse({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]})
    assert info.value.kind == "Bad Request" and info.value.param == "body.stop"
    assert "List should have at most 4 items after validation, not 5" in info.value.message


def test_stop_strings_cut_where_vllms_detokenizer_cuts():
    pieces = [placeholder_token(i) for i in range(10)]  # " lorem ipsum dolor sit amet ..."
    match = find_stop(pieces, ("sit",), min_tokens=0, include=False)
    assert (match.tokens, match.stop, match.text_length) == (4, "sit", len(" lorem ipsum dolor "))
    assert find_stop(pieces, ("sit",), min_tokens=0, include=True).text_length == len(" lorem ipsum dolor sit")
    # min_tokens: stop strings are only checked once min_tokens tokens exist
    assert find_stop(pieces[:8], ("ipsum",), min_tokens=2, include=False) is None
    assert find_stop(pieces, ("ipsum",), min_tokens=2, include=False).tokens == 10  # the text repeats every 8
    # the stop string that completes earliest wins
    assert find_stop(pieces, ("amet", "or s"), min_tokens=0, include=False).stop == "or s"
