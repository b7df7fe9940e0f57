"""The simulator's tokenisation rule: one whitespace-separated word is one token.

The simulator has no tokenizer and no model. A prompt of N words counts as N prompt tokens;
a list of integers counts as that many token ids. Generated text is placeholder text: token i
is the word PLACEHOLDER_WORDS[i % len], preceded by a space, so N generated tokens are N words
and feeding an output back in as a prompt counts the same number of tokens. Chat messages
count the words of every text content part; no chat-template tokens are added.

The load generator builds prompts with `placeholder_prompt(n)` (n copies of one short word),
which a real tokenizer also turns into roughly n tokens, so the same trace drives real vLLM.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDER_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
PROMPT_WORD = "hi"


class PromptError(ValueError):
    """A prompt or message list the simulator cannot count; `param` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def count_prompt_tokens(prompt: Any) -> int:
    """Tokens in a completions `prompt`: a string, a list of token ids, or a one-item list."""
    if isinstance(prompt, str):
        return len(prompt.split())
    if isinstance(prompt, list):
        if prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)
        if len(prompt) == 1:
            return count_prompt_tokens(prompt[0])
        if len(prompt) > 1:
            raise PromptError("the simulator accepts one prompt per request, not a batch", "prompt")
    raise PromptError("prompt must be a string, a list of token ids, or a one-item list", "prompt")


def count_chat_tokens(messages: Any) -> int:
    """Tokens in a chat `messages` list: the words of every text content."""
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages must be a non-empty list", "messages")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise PromptError(f"messages[{i}] must be an object with a role", "messages")
        content = message.get("content")
        if content is None:
            continue
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    total += len(str(part.get("text", "")).split())
        else:
            raise PromptError(f"messages[{i}].content must be a string or a list of parts", "messages")
    return total


def placeholder_token(index: int) -> str:
    """Text of generated token `index` (0-based), with its leading space."""
    return " " + PLACEHOLDER_WORDS[index % len(PLACEHOLDER_WORDS)]


def placeholder_text(num_tokens: int) -> str:
    """The text of num_tokens generated tokens."""
    return "".join(placeholder_token(i) for i in range(num_tokens))


def placeholder_prompt(num_tokens: int) -> str:
    """A prompt the simulator counts as exactly num_tokens tokens."""
    return " ".join([PROMPT_WORD] * num_tokens)
