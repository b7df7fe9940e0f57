"""Response bodies and stream chunks laid out as vLLM 0.33.0 serialises them (pure).

Key order is the pydantic models' declaration order and the set of keys follows the
serialisation flags vLLM uses (notes: /work/notes/vllm-fidelity.md §0.1, §6, §7):
  * non-streaming bodies: `model_dump()`, every declared field present, nulls included
    (entrypoints/openai/completion/protocol.py `CompletionResponse`, chat_completion/protocol.py
    `ChatCompletionResponse`);
  * completion chunks: `model_dump_json(exclude_unset=True)` (completion/serving.py), so only the
    fields the handler passes; chat chunks the same with `exclude_none` when `choices` is empty;
  * the final usage chunk of completions: `exclude_unset=False, exclude_none=True`;
  * `UsageInfo` is prompt_tokens, total_tokens, completion_tokens (serve/engine/protocol.py).
Logprob values are invented (no model runs): the sampled token is the most likely one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from kiban_serving.sim.tokens import PLACEHOLDER_WORDS, id_word

VLLM_VERSION = "0.33.0"
LOGPROB_FLOOR = -9999.0


def system_fingerprint(served_model_name: str, max_model_len: int, profile: str) -> str:
    """serve/utils/fingerprint.py, mode "full": vllm-<version>-<8 hex of the config hash>."""
    digest = hashlib.sha256(f"{served_model_name}|{max_model_len}|{profile}".encode()).hexdigest()
    return f"vllm-{VLLM_VERSION}-{digest[:8]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None, chat: bool = False,
          full: bool = True) -> dict:
    body: dict = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                  "completion_tokens": completion_tokens}
    if cached_tokens is not None:
        details = {"cached_tokens": cached_tokens}
        if chat:
            details["created_cache_tokens"] = None
        body["prompt_tokens_details"] = details
    elif full:
        body["prompt_tokens_details"] = None
    if full:
        body["completion_tokens_details"] = None
    return body


@dataclass
class Logprobs:
    """Per-token logprob entries for one choice, as completions or chat lay them out."""

    top: int  # entries per position (completions: logprobs; chat: top_logprobs)
    chat: bool
    text_offset: int = 0
    entries: list = field(default_factory=list)

    def alternatives(self, index: int, token: str) -> list[tuple[str, float]]:
        """(token, logprob) pairs, the sampled token first and most likely."""
        sampled = round(-0.05 - 0.01 * (index % 7), 4)
        out = [(token, sampled)]
        rank = 1
        while len(out) < max(self.top, 1):
            word = " " + (PLACEHOLDER_WORDS[(index + rank) % len(PLACEHOLDER_WORDS)]
                          if rank < len(PLACEHOLDER_WORDS) else id_word(1000 + rank))
            if word != token:
                out.append((word, round(sampled - 1.5 * rank, 4)))
            rank += 1
        return out

    def piece(self, index: int, token: str) -> dict:
        """This token's entry; call in token order."""
        pairs = self.alternatives(index, token)
        if self.chat:
            return {"token": token, "logprob": max(pairs[0][1], LOGPROB_FLOOR), "bytes": list(token.encode()),
                    "top_logprobs": [{"token": t, "logprob": max(lp, LOGPROB_FLOOR), "bytes": list(t.encode())}
                                     for t, lp in pairs[: self.top]]}
        return {"token": token, "logprob": max(pairs[0][1], LOGPROB_FLOOR),
                "top": {t: lp for t, lp in pairs[: self.top + 1]}}

    def block(self, pieces: list[dict]) -> dict:
        """The `logprobs` object of one chunk or body covering `pieces` (text offsets continue)."""
        if self.chat:
            return {"content": pieces}
        offsets = []
        for piece in pieces:
            offsets.append(self.text_offset)
            self.text_offset += len(piece["token"])
        return {"text_offset": offsets, "token_logprobs": [p["logprob"] for p in pieces],
                "tokens": [p["token"] for p in pieces], "top_logprobs": [p["top"] for p in pieces]}


def completion_choice(index: int, text: str, logprobs: dict | None, finish: str | None, stop_reason,
                      token_ids: list[int] | None, prompt_token_ids: list[int] | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": stop_reason,
            "token_ids": token_ids, "prompt_logprobs": None, "prompt_token_ids": prompt_token_ids,
            "routed_experts": None, "weight_versions": None}


def chat_choice(index: int, text: str, logprobs: dict | None, finish: str | None, stop_reason,
                token_ids: list[int] | None) -> dict:
    message = {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
               "function_call": None, "reasoning": None}
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish,
            "stop_reason": stop_reason, "token_ids": token_ids, "routed_experts": None, "weight_versions": None}


def completion_body(rid: str, created: int, model: str, choices: list[dict], usage_body: dict,
                    fingerprint: str) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "service_tier": None, "system_fingerprint": fingerprint, "usage": usage_body,
            "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}


def chat_body(rid: str, created: int, model: str, choices: list[dict], usage_body: dict, fingerprint: str,
              prompt_token_ids: list[int] | None) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "service_tier": None, "system_fingerprint": fingerprint, "usage": usage_body, "prompt_logprobs": None,
            "prompt_token_ids": prompt_token_ids, "prompt_text": None, "kv_transfer_params": None,
            "ec_transfer_params": None, "metrics": None}


def _stream_tail(chunk: dict, usage_body: dict | None, fingerprint: str | None) -> dict:
    """The fields vLLM's stream generators append to a token chunk, in its order."""
    if usage_body is not None:
        chunk["usage"] = usage_body
    if fingerprint is not None:
        chunk["system_fingerprint"] = fingerprint
    chunk["kv_transfer_params"] = None
    return chunk

def completion_chunk(rid: str, created: int, model: str, index: int, text: str, logprobs: dict | None,
                     finish: str | None, stop_reason, *, token_ids: list[int] | None = None,
                     prompt_token_ids: list[int] | None = None, usage_body: dict | None = None,
                     fingerprint: str | None = None) -> dict:
    """One token chunk (completion/serving.py completion_stream_generator, exclude_unset)."""
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
              "stop_reason": stop_reason, "prompt_token_ids": prompt_token_ids, "token_ids": token_ids,
              "weight_versions": None}
    chunk: dict = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
    return _stream_tail(chunk, usage_body, fingerprint)


def chat_role_chunk(rid: str, created: int, model: str, index: int, usage_body: dict | None = None) -> dict:
    chunk: dict = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]}
    if usage_body is not None:
        chunk["usage"] = usage_body
    chunk["prompt_token_ids"] = None
    chunk["prompt_text"] = None
    return chunk


def chat_chunk(rid: str, created: int, model: str, index: int, text: str, logprobs: dict | None,
               finish: str | None, stop_reason, *, token_ids: list[int] | None = None,
               usage_body: dict | None = None, fingerprint: str | None = None) -> dict:
    """One token chunk of chat (chat_completion/serving.py chat_completion_stream_generator)."""
    choice: dict = {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = stop_reason
    choice["token_ids"] = token_ids
    if finish is not None:
        choice["weight_versions"] = None
    chunk: dict = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [choice]}
    return _stream_tail(chunk, usage_body, fingerprint)


def final_usage_chunk(rid: str, created: int, model: str, chat: bool, usage_body: dict, fingerprint: str) -> dict:
    """The usage-only chunk after every choice finished (include_usage)."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": [], "usage": usage_body, "system_fingerprint": fingerprint}


def model_card(served_name: str, root: str, max_model_len: int | None, created: int, permission_id: str) -> dict:
    """openai/models/serving.py show_available_models: one ModelCard per served name."""
    return {"id": served_name, "object": "model", "created": created, "owned_by": "vllm", "root": root,
            "parent": None, "max_model_len": max_model_len,
            "permission": [{"id": permission_id, "object": "model_permission", "created": created,
                            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                            "organization": "*", "group": None, "is_blocking": False}]}
