"""Engine profiles (GPU x model size) derived from public hardware specs and vLLM measurements.

Every number in a profile is computed here from three kinds of input, each named with its
source, so a reviewer can redo the arithmetic:

1. Hardware datasheets (memory, HBM/GDDR bandwidth, dense bf16 tensor TFLOPS).
2. Model architecture from the public Hugging Face config.json of the Llama 3.x family
   (parameter count, layers, KV heads, head dim), giving weight bytes and KV bytes per token.
3. Measured serving efficiencies from public vLLM benchmarks:
   - MBU_DECODE = 0.77: J. Musgrave, "vLLM throughput-latency sweep on NVIDIA A100"
     (johnmusgrave.com/p/vllm-throughput-latency-sweep-on; vLLM 0.23, Llama-3.1-8B-Instruct
     bf16, A100-40GB, 1024 in / 128 out, --ignore-eos): batch-1 decode ran at ~75 tok/s, i.e.
     13.3 ms per step, which the author puts at ~77 % of the memory-bandwidth roof
     (16.06 GB / 1.555 TB/s = 10.3 ms; 10.3 / 13.3 = 0.77).
   - BETA_REF_MS = 0.404 ms per running sequence: same sweep, concurrency 8 gave 6.6x the
     batch-1 throughput, so step(8) = 8 / 6.6 * 13.3 ms = 16.1 ms and
     beta = (16.1 - 13.3) / 7 = 0.404 ms. The per-sequence cost is dominated by reading that
     sequence's KV cache, so other (GPU, model) pairs scale it by KV bytes per token per GPU
     and by memory bandwidth (an extrapolation, stated as such).
   - Cross-check for H100: cloudai.pt ("CUDA Graphs + torch.compile: 1.65x LLM decode
     speedup") measured one Llama-3.1-8B decode step on H100 SXM5 at 5.1 ms with CUDA graphs;
     the MBU-derived alpha below is 6.2 ms, so the H100 profiles are conservative by ~20 %.

Extrapolations (no public measurement at hand; re-fitted online from Prometheus anyway):
   - MFU_PREFILL = 0.5 of dense bf16 peak for prefill (compute bound, 2 FLOPs per parameter
     per token); an assumption within the range commonly reported for large-batch GEMMs.
   - gamma (fixed cost of a step that runs prefill) = the time to stream the weights once,
     the same memory-bound floor as alpha: a forward pass reads every weight at least once.
   - Tensor parallel: weights and KV split evenly over the GPUs; all-reduce cost not modelled.
   - startup_s = 39 s of torch.compile/graph capture (measured in route179.dev "Optimizing
     vLLM cold start with model streaming and compile caching") + weights per GPU read at an
     assumed 2 GB/s from a local cache; image pull and download are not included.
KV capacity: GPU memory x 0.9 (vLLM's default --gpu-memory-utilization) minus weights,
divided by KV bytes per token (2 [K and V] x layers x KV heads x head dim x 2 bytes bf16);
activation workspace is not subtracted, so real vLLM reports somewhat fewer tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kiban.capacity.engine_profile import EngineProfile

GPU_MEMORY_UTILIZATION = 0.9  # vLLM default --gpu-memory-utilization
DEFAULT_MAX_NUM_SEQS = 256  # vLLM default --max-num-seqs for the OpenAI server
MBU_DECODE = 0.77  # measured, see module docstring
MFU_PREFILL = 0.5  # assumption, see module docstring
BETA_REF_MS = 0.404  # measured on A100-40GB with Llama-3.1-8B, see module docstring
BETA_REF_BANDWIDTH_GBPS = 1555.0  # A100-40GB SXM datasheet bandwidth
BETA_REF_KV_BYTES_PER_TOKEN = 131072  # Llama-3.1-8B bf16, one GPU
STARTUP_COMPILE_S = 39.0  # measured torch.compile phase, see module docstring
STARTUP_LOAD_GBPS = 2.0  # assumed local weight read rate
BF16_BYTES = 2


@dataclass(frozen=True)
class GpuSpec:
    """Datasheet figures for one accelerator profile."""

    memory_gb: float
    bandwidth_gbps: float
    bf16_dense_tflops: float
    datasheet: str


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one model size, from its public config.json."""

    name: str
    params_b: float
    layers: int
    kv_heads: int
    head_dim: int
    bytes_per_parameter: float = BF16_BYTES  # weights; KV stays 16-bit

    @property
    def weight_bytes(self) -> float:
        return self.params_b * 1e9 * self.bytes_per_parameter

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * BF16_BYTES


GPUS: dict[str, GpuSpec] = {
    "nvidia-l4": GpuSpec(24.0, 300.0, 121.0, "NVIDIA L4 datasheet: 24 GB GDDR6, 300 GB/s, 121 TFLOPS bf16 dense"),
    "nvidia-a100-80gb": GpuSpec(
        80.0, 2039.0, 312.0, "NVIDIA A100 datasheet: 80 GB HBM2e SXM, 2039 GB/s, 312 TFLOPS bf16 dense"
    ),
    "nvidia-h100-80gb": GpuSpec(
        80.0, 3350.0, 989.0, "NVIDIA H100 datasheet: 80 GB HBM3 SXM, 3.35 TB/s, 989 TFLOPS bf16 dense"
    ),
    # A100-80GB MIG 1g.10gb slice: 1 of 8 memory slices (10 GB, 2039/8 GB/s) and 14 of 108 SMs
    # (NVIDIA MIG user guide); compute scaled by SM share: 312 * 14/108 = 40.4 TFLOPS.
    "nvidia-mig-1g.10gb": GpuSpec(
        10.0, 2039.0 / 8, 312.0 * 14 / 108, "NVIDIA MIG user guide: A100-80GB 1g.10gb = 1/8 memory, 14/108 SMs"
    ),
}

MODELS: dict[float, ModelSpec] = {
    1.0: ModelSpec("Llama-3.2-1B", 1.24, layers=16, kv_heads=8, head_dim=64),
    3.0: ModelSpec("Llama-3.2-3B", 3.21, layers=28, kv_heads=8, head_dim=128),
    8.0: ModelSpec("Llama-3.1-8B", 8.03, layers=32, kv_heads=8, head_dim=128),
    70.0: ModelSpec("Llama-3.1-70B", 70.6, layers=80, kv_heads=8, head_dim=128),
    405.0: ModelSpec("Llama-3.1-405B", 405.9, layers=126, kv_heads=8, head_dim=128),
}

# (gpu, nominal size in B) -> tensor-parallel degree the profile assumes.
PROFILE_TENSOR_PARALLEL: dict[tuple[str, float], int] = {
    ("nvidia-l4", 1.0): 1,
    ("nvidia-l4", 3.0): 1,
    ("nvidia-l4", 8.0): 1,
    ("nvidia-a100-80gb", 8.0): 1,
    ("nvidia-a100-80gb", 70.0): 4,  # 141 GB of weights need >= 2 GPUs; 4 leaves room for KV
    ("nvidia-h100-80gb", 8.0): 1,
    ("nvidia-h100-80gb", 70.0): 4,
    ("nvidia-a100-80gb", 405.0): 8,  # 812 GB of weights: two nodes of 8 (kiban.sizing), one stage each
    ("nvidia-h100-80gb", 405.0): 8,
    ("nvidia-mig-1g.10gb", 1.0): 1,
    ("nvidia-mig-1g.10gb", 3.0): 1,
    ("nvidia-mig-1g.10gb", 8.0): 1,  # does not fit: derive_profile refuses it (kept out below)
}


# (gpu, nominal size in B) -> pipeline stages (one per node) of a profile bigger than one node.
# A token passes the stages one after another, each streaming its share of the weights over TP
# GPUs: step times (alpha, beta, delta) are those of TP alone, while KV capacity and the
# per-GPU load time count every GPU. The pipeline bubble and the hop between nodes are not
# modelled (an extrapolation; the online re-fit corrects it).
PROFILE_PIPELINE_PARALLEL: dict[tuple[str, float], int] = {
    ("nvidia-a100-80gb", 405.0): 2,
    ("nvidia-h100-80gb", 405.0): 2,
}


def decode_alpha_ms(gpu: GpuSpec, model: ModelSpec, tp: int) -> float:
    """Batch-1 decode step: stream this GPU's share of the weights at the measured MBU."""
    return model.weight_bytes / tp / (gpu.bandwidth_gbps * 1e9 * MBU_DECODE) * 1e3


def decode_beta_ms(gpu: GpuSpec, model: ModelSpec, tp: int) -> float:
    """Extra step time per running sequence, scaled from the measured A100/8B value."""
    kv_scale = (model.kv_bytes_per_token / tp) / BETA_REF_KV_BYTES_PER_TOKEN
    return BETA_REF_MS * kv_scale * BETA_REF_BANDWIDTH_GBPS / gpu.bandwidth_gbps


def prefill_delta_ms(gpu: GpuSpec, model: ModelSpec, tp: int) -> float:
    """Prefill time per prompt token: 2 FLOPs per parameter at MFU_PREFILL of dense peak."""
    flops_per_token = 2 * model.params_b * 1e9
    return flops_per_token / (tp * gpu.bf16_dense_tflops * 1e12 * MFU_PREFILL) * 1e3


def kv_cache_tokens(gpu: GpuSpec, model: ModelSpec, gpus: int,
                    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION) -> int:
    """Tokens of KV cache left after the weights on `gpus` GPUs (vLLM's default memory utilisation)."""
    free_bytes = gpus * gpu.memory_gb * 1e9 * gpu_memory_utilization - model.weight_bytes
    if free_bytes <= 0:
        raise ValueError(f"{model.name} weights ({model.weight_bytes / 1e9:.1f} GB) leave no KV cache on "
                         f"{gpus} x GPU with {gpu.memory_gb:g} GB")
    return int(free_bytes // model.kv_bytes_per_token)


def startup_seconds(model: ModelSpec, tp: int) -> float:
    """Compile/graph-capture time plus reading this GPU's share of the weights."""
    return round(STARTUP_COMPILE_S + model.weight_bytes / tp / (STARTUP_LOAD_GBPS * 1e9), 1)


def derive_profile(gpu_name: str, size_b: float, tp: int, pp: int = 1) -> EngineProfile:
    """Build one EngineProfile from the datasheet, the architecture and measured efficiencies
    (pp > 1: pipeline stages across nodes, see PROFILE_PIPELINE_PARALLEL)."""
    gpu, model = GPUS[gpu_name], MODELS[size_b]
    alpha = decode_alpha_ms(gpu, model, tp)
    stages = f", pipeline parallel {pp} (one stage per node)" if pp > 1 else ""
    return EngineProfile(
        name=profile_key(gpu_name, size_b),
        gpu=gpu_name,
        model_params_b=size_b,
        alpha_ms=round(alpha, 3),
        beta_ms=round(decode_beta_ms(gpu, model, tp), 4),
        gamma_ms=round(alpha, 3),
        delta_ms=round(prefill_delta_ms(gpu, model, tp), 5),
        max_num_seqs=DEFAULT_MAX_NUM_SEQS,
        kv_cache_tokens=kv_cache_tokens(gpu, model, tp * pp),
        startup_s=startup_seconds(model, tp * pp),
        source=(
            f"{model.name} bf16, tensor parallel {tp}{stages}. {gpu.datasheet}. Decode alpha at MBU "
            f"{MBU_DECODE} and beta {BETA_REF_MS} ms/seq from J. Musgrave's vLLM 0.23 A100 "
            f"sweep (Llama-3.1-8B), beta scaled by KV bytes and bandwidth; prefill at an "
            f"assumed MFU {MFU_PREFILL}; derivation in kiban/capacity/profiles.py."
        ),
    )


def profile_key(gpu: str, size_b: float) -> str:
    """Key as '<gpu>/<size>B', e.g. 'nvidia-l4/8B'."""
    return f"{gpu}/{size_b:g}B"


def _build_profiles() -> dict[str, EngineProfile]:
    profiles = {}
    for (gpu_name, size_b), tp in PROFILE_TENSOR_PARALLEL.items():
        try:
            profile = derive_profile(gpu_name, size_b, tp, PROFILE_PIPELINE_PARALLEL.get((gpu_name, size_b), 1))
        except ValueError:
            continue  # the model does not fit this GPU: no profile, get_profile says so
        profiles[profile.name] = profile
    return profiles


PROFILES: dict[str, EngineProfile] = _build_profiles()


def get_profile(gpu: str, model_params_b: float) -> EngineProfile:
    """The profile for this GPU whose model size is nearest to model_params_b (log scale)."""
    if model_params_b <= 0 or not math.isfinite(model_params_b):
        raise ValueError(f"model_params_b must be a positive number, got {model_params_b!r}")
    candidates = [p for p in PROFILES.values() if p.gpu == gpu]
    if not candidates:
        raise KeyError(
            f"no engine profile for gpu {gpu!r}; profiles exist for: {', '.join(sorted(PROFILES))}"
        )
    return min(
        candidates,
        key=lambda p: (abs(math.log(p.model_params_b / model_params_b)), p.model_params_b),
    )


def get_profile_by_name(name: str) -> EngineProfile:
    """Look up a profile by its '<gpu>/<size>B' key, with an error listing what exists."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(
            f"unknown engine profile {name!r}; profiles exist for: {', '.join(sorted(PROFILES))}"
        ) from None


def nearest_architecture(params_b: float) -> ModelSpec:
    """The Llama 3.x architecture nearest in size (log scale): its KV geometry stands in for an
    unlisted model's (KV bytes per token are not in a FoundationModel's spec)."""
    if not (isinstance(params_b, (int, float)) and params_b > 0 and math.isfinite(params_b)):
        raise ValueError(f"params_b must be a positive number, got {params_b!r}")
    return min(MODELS.values(), key=lambda m: (abs(math.log(m.params_b / params_b)), m.params_b))


def derive_profile_for(gpu_name: str, params_b: float, tp: int, bytes_per_parameter: float = BF16_BYTES,
                       gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION, pp: int = 1) -> EngineProfile:
    """An engine profile for any model size, precision and tensor-parallel degree on a known GPU.

    The catalogue's formulas (the functions above) with the stated parameter count and weight
    bytes per parameter (quantized weights stream faster and leave more KV cache; prefill FLOPs
    are the same 2 per parameter per token) and the KV geometry of `nearest_architecture`.
    `pp` > 1: pipeline stages across nodes, as PROFILE_PIPELINE_PARALLEL (step times of TP
    alone, KV cache over every GPU; the bubble and the hop between nodes are not modelled).
    """
    if gpu_name not in GPUS:
        raise KeyError(f"no datasheet figures for gpu {gpu_name!r}; known: {', '.join(sorted(GPUS))}")
    if tp < 1 or pp < 1:
        raise ValueError(f"tensor and pipeline parallel degrees must be >= 1, got {tp!r} and {pp!r}")
    gpu, arch = GPUS[gpu_name], nearest_architecture(params_b)
    model = replace(arch, name=f"{params_b:g}B", params_b=params_b, bytes_per_parameter=bytes_per_parameter)
    alpha = decode_alpha_ms(gpu, model, tp)
    precision = {2.0: "16-bit", 1.0: "8-bit", 0.5: "4-bit"}.get(bytes_per_parameter, f"{bytes_per_parameter:g} B/param")
    suffix = (f"-tp{tp}" if tp > 1 else "") + (f"-pp{pp}" if pp > 1 else "")
    return EngineProfile(
        name=f"{gpu_name}/{params_b:g}B{suffix}" + ("" if bytes_per_parameter == BF16_BYTES else f"-{precision}"),
        gpu=gpu_name,
        model_params_b=params_b,
        alpha_ms=round(alpha, 3),
        beta_ms=round(decode_beta_ms(gpu, model, tp), 4),
        gamma_ms=round(alpha, 3),
        delta_ms=round(prefill_delta_ms(gpu, model, tp), 5),
        max_num_seqs=DEFAULT_MAX_NUM_SEQS,
        kv_cache_tokens=kv_cache_tokens(gpu, model, tp * pp, gpu_memory_utilization),
        startup_s=startup_seconds(model, tp * pp),
        source=(f"{params_b:g}B at {precision} weights, tensor parallel {tp}"
                + (f", pipeline parallel {pp} (one stage per node)" if pp > 1 else "")
                + f", KV geometry of {arch.name}. {gpu.datasheet}. Same formulas as the catalogue "
                "(kiban/capacity/profiles.py)."),
    )
