"""The simulator's tokenisation rule: one whitespace-separated word is one token.

The simulator has no model. A prompt of N words counts as N prompt tokens; a list of integers
counts as that many token ids. Generated text is placeholder text: token i is the word
PLACEHOLDER_WORDS[i % len], preceded by a space, so N generated tokens are N words and feeding
an output back in as a prompt counts the same number of tokens. Chat messages count the words
of every text content part, in order; no chat-template tokens are added (real vLLM counts the
template's tokens too).

Token ids: the words of `VOCABULARY` have fixed ids (0 `<unk>`, 1 `</s>` the end-of-sequence
token, then the prompt word and the placeholder words); any other word gets a stable id from a
hash of its text in [len(VOCABULARY), VOCAB_SIZE) (remembered, so /detokenize gives it back), and
the word `tok<N>` is id N, so /detokenize can name every id. Prefix-cache block hashes are chained over these ids (`block_hashes`), as
vLLM's `hash_block_tokens` chains over token ids (vllm/v1/core/kv_cache_utils.py).

`write_hf_tokenizer` writes the same rule as a Hugging Face tokenizer (a word-level model over
VOCABULARY, whitespace pre-tokenizer), so a client that re-tokenises the simulator's text with
it (inference-perf does) counts exactly what the simulator reports in `usage`.

The load generator builds prompts with `distinct_prompt(n, key)` (n short words, the first 16 unique
to the request),
which a real tokenizer also turns into roughly n tokens, so the same trace drives real vLLM.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PLACEHOLDER_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
PROMPT_WORD = "hi"
UNK_TOKEN, EOS_TOKEN = "<unk>", "</s>"
VOCABULARY = (UNK_TOKEN, EOS_TOKEN, PROMPT_WORD, *PLACEHOLDER_WORDS)
EOS_TOKEN_ID = 1
VOCAB_SIZE = 128256  # Llama 3's vocabulary size: ids above the fixed words come from a hash
_WORD_IDS = {word: index for index, word in enumerate(VOCABULARY)}
_TOK_WORD = re.compile(r"tok(\d+)")
MAX_SEEN_WORDS = 100_000  # words remembered for /detokenize (per process)
_SEEN: dict[int, str] = {}
NONE_HASH = hashlib.sha256(b"kiban-sim prefix cache seed").digest()  # vLLM's NONE_HASH plays this part


class PromptError(ValueError):
    """A prompt or message list the simulator cannot count; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@functools.lru_cache(maxsize=1 << 16)
def word_id(word: str) -> int:
    """The token id of one word (see the module doc)."""
    fixed = _WORD_IDS.get(word)
    if fixed is not None:
        return fixed
    match = _TOK_WORD.fullmatch(word)
    if match and len(VOCABULARY) <= int(match.group(1)) < VOCAB_SIZE:
        return int(match.group(1))
    token_id = len(VOCABULARY) + zlib.crc32(word.encode()) % (VOCAB_SIZE - len(VOCABULARY))
    if len(_SEEN) < MAX_SEEN_WORDS:
        _SEEN.setdefault(token_id, word)
    return token_id


def id_word(token_id: int) -> str:
    """The text of one token id: a fixed word, a word this process has tokenised, else `tok<N>`."""
    if 0 <= token_id < len(VOCABULARY):
        return VOCABULARY[token_id]
    return _SEEN.get(token_id, f"tok{token_id}")


def text_token_ids(text: str) -> list[int]:
    return [word_id(word) for word in text.split()]


def detokenize(token_ids: Iterable[int]) -> str:
    return " ".join(id_word(t) for t in token_ids)


def is_token_id_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def prompt_token_ids(prompt: Any) -> list[int]:
    """Token ids of ONE completions prompt: a string or a list of token ids."""
    if isinstance(prompt, str):
        return text_token_ids(prompt)
    if is_token_id_list(prompt):
        return list(prompt)
    raise PromptError("prompt must be a string or a list of token ids", "prompt")


def split_prompts(prompt: Any) -> list[Any]:
    """The prompts of a completions request (vLLM: str | list[str] | list[int] | list[list[int]])."""
    if isinstance(prompt, str) or is_token_id_list(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) or isinstance(p, list) for p in prompt):
        return list(prompt)
    raise PromptError("prompt must be a string, a list of strings, a list of token ids or a list of token-id lists",
                      "prompt")


def count_prompt_tokens(prompt: Any) -> int:
    """Tokens in one completions prompt (a string, a list of token ids, or a one-item list)."""
    if isinstance(prompt, list) and len(prompt) == 1 and not is_token_id_list(prompt):
        prompt = prompt[0]
    return len(prompt_token_ids(prompt))


def chat_text(messages: Any) -> str:
    """The words of every text content of a chat `messages` list, in order."""
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages must be a non-empty list", "messages")
    parts: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise PromptError(f"messages[{i}] must be an object with a role", "messages")
        content = message.get("content")
        if content is None:
            continue
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    parts.append(str(part.get("text", "")))
        else:
            raise PromptError(f"messages[{i}].content must be a string or a list of parts", "messages")
    return " ".join(parts)


def count_chat_tokens(messages: Any) -> int:
    """Tokens in a chat `messages` list: the words of every text content."""
    return len(chat_text(messages).split())


def placeholder_token(index: int) -> str:
    """Text of generated token `index` (0-based), with its leading space."""
    return " " + PLACEHOLDER_WORDS[index % len(PLACEHOLDER_WORDS)]


def placeholder_token_id(index: int) -> int:
    return _WORD_IDS[PLACEHOLDER_WORDS[index % len(PLACEHOLDER_WORDS)]]


def placeholder_text(num_tokens: int) -> str:
    """The text of num_tokens generated tokens."""
    return "".join(placeholder_token(i) for i in range(num_tokens))


def placeholder_prompt(num_tokens: int) -> str:
    """A prompt the simulator counts as exactly num_tokens tokens."""
    return " ".join([PROMPT_WORD] * num_tokens)


DISTINCT_WORDS = ("hi", "yo", "ok", "so")  # one token each in common BPE vocabularies too
DISTINCT_PREFIX_TOKENS = 16  # one KV block: a distinct first block means no prefix-cache hit at all


def distinct_prompt(num_tokens: int, key: int) -> str:
    """A prompt of exactly num_tokens tokens whose first block is unique to `key` (< 4**16).

    Trace replays carry no prefix information, so their prompts must not share a prefix by
    accident: a prefix cache (vLLM's, the simulator's) would otherwise serve repeats of one
    placeholder prompt almost for free. The first 16 words spell `key` in base 4.
    """
    words = [PROMPT_WORD] * num_tokens
    if num_tokens >= DISTINCT_PREFIX_TOKENS:
        for i in range(DISTINCT_PREFIX_TOKENS):
            words[i] = DISTINCT_WORDS[(key >> (2 * i)) & 3]
    return " ".join(words)


def block_hashes(token_ids: Sequence[int], block_size: int, extra: bytes = b"") -> list[bytes]:
    """Chained hashes of the full blocks of token_ids (a partial last block is not hashed).

    hash_i = sha256(hash_{i-1} || ids of block i), starting from NONE_HASH; `extra` (a cache
    salt) enters the first block only, as vLLM's extra keys do.
    """
    out: list[bytes] = []
    parent = NONE_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        digest = hashlib.sha256(parent)
        if start == 0 and extra:
            digest.update(extra)
        digest.update(struct.pack(f"<{block_size}q", *token_ids[start:start + block_size]))
        parent = digest.digest()
        out.append(parent)
    return out


def hf_tokenizer_json() -> dict:
    """The tokenisation rule as a `tokenizers` JSON document (word level, whitespace split)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, token in enumerate((UNK_TOKEN, EOS_TOKEN))
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": False},
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(VOCABULARY)}, "unk_token": UNK_TOKEN},
    }


def write_hf_tokenizer(directory: Path, model_max_length: int = 8192) -> Path:
    """Write tokenizer.json and tokenizer_config.json for `AutoTokenizer.from_pretrained(directory)`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(hf_tokenizer_json()))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": UNK_TOKEN, "eos_token": EOS_TOKEN,
        "model_max_length": model_max_length, "clean_up_tokenization_spaces": False,
    }))
    return directory
