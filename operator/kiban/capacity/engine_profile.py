"""The parameters of one vLLM engine (GPU x model) that both the capacity model and the simulator use.

One dataclass shared by `kiban.capacity` (which predicts latency from it) and
`kiban_serving.sim` (which behaves according to it), so the model and the simulator can never
disagree about what a parameter means. Units follow capacity-model.md section 2:
  prefill(n) = gamma_ms + delta_ms * prompt_tokens * n     (ms, batch of n prefills)
  decode(n)  = alpha_ms + beta_ms * n                      (ms per token step, n running)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineProfile:
    """Service-time parameters of one engine configuration, with where the numbers came from."""

    name: str  # e.g. "nvidia-l4/8B"
    gpu: str  # accelerator profile name, e.g. "nvidia-l4"
    model_params_b: float  # model size in billions of parameters
    alpha_ms: float  # decode step time at zero batch (ms per token step)
    beta_ms: float  # extra decode step time per running sequence (ms)
    gamma_ms: float  # fixed prefill cost per scheduling step (ms)
    delta_ms: float  # prefill cost per prompt token (ms per token)
    max_num_seqs: int  # vLLM --max-num-seqs (batch limit B)
    kv_cache_tokens: int  # KV-cache capacity in tokens (from GPU memory after weights)
    startup_s: float  # time from pod start to /health OK (model load), seconds
    source: str  # public benchmark the numbers were taken from
