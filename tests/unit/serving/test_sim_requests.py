"""Request validation and the tokenisation rule of the simulator's OpenAI API (pure parts)."""

from __future__ import annotations

import pytest

from kiban_serving.sim.server import ApiError, parse_generation_request
from kiban_serving.sim.tokens import count_chat_tokens, count_prompt_tokens, placeholder_prompt, placeholder_text


def parse(body, chat=False):
    return parse_generation_request(body, chat=chat, model_name="m", max_model_len=100)


def test_one_word_is_one_token():
    assert count_prompt_tokens(placeholder_prompt(37)) == 37
    assert count_prompt_tokens([1, 2, 3]) == 3
    assert count_prompt_tokens(["a b"]) == 2
    assert len(placeholder_text(9).split()) == 9
    assert count_chat_tokens([{"role": "user", "content": [{"type": "text", "text": "a b c"}]}]) == 3


def test_valid_request_defaults():
    parsed = parse({"model": "m", "prompt": "a b c"})
    assert parsed.prompt_tokens == 3 and parsed.max_tokens == 97 and not parsed.stream
    chat = parse({"messages": [{"role": "user", "content": "x y"}], "max_completion_tokens": 5,
                  "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}, chat=True)  # fmt: skip
    assert (chat.prompt_tokens, chat.max_tokens, chat.stream, chat.include_usage, chat.ignore_eos) == (2, 5, True, True, True)


@pytest.mark.parametrize(
    ("body", "chat", "status", "param"),
    [
        ({"model": "other", "prompt": "a"}, False, 404, "model"),
        ({"model": "m"}, False, 400, "prompt"),
        ({"model": "m"}, True, 400, "messages"),
        ({"prompt": "a", "max_tokens": 0}, False, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": "5"}, False, 400, "max_tokens"),
        ({"prompt": "a " * 100}, False, 400, "prompt"),
        ({"prompt": "a b", "max_tokens": 99}, False, 400, "max_tokens"),
        ({"prompt": "a", "max_tokens": 5, "min_tokens": 6}, False, 400, "min_tokens"),
        ({"prompt": "a", "n": 2}, False, 400, "n"),
        ({"prompt": "a", "stream": "yes"}, False, 400, "stream"),
        ({"prompt": ""}, False, 400, "prompt"),
        ({"prompt": ["a", "b"]}, False, 400, "prompt"),
        ({"messages": []}, True, 400, "messages"),
        ([1, 2], False, 400, None),
    ],
)
def test_bad_requests_name_the_field(body, chat, status, param):
    with pytest.raises(ApiError) as info:
        parse(body, chat)
    assert info.value.status == status and info.value.param == param
