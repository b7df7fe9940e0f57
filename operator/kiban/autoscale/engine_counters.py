"""What the engine fit reads from Prometheus: each engine's vLLM counters over the rate window.

Pure: the PromQL (one query per counter for every model's engines at once, `increase()` over
the window per series, no aggregation, inside the subset docs/autoscaling.md lists) and the
answers turned into one `kiban.capacity.fitting.EngineWindow` per engine, joined on the
series' own labels (namespace, instance, engine) as `collector.decode_pairs` joins them.
kiban.autoscale.collector asks these queries with the others (all optional: a failed one
leaves the fit with less to learn from, never the metrics unavailable).

vLLM 0.33's names (vllm/v1/metrics/loggers.py); fitting.engine_rows says what each measures.
`prompt_tokens` counts cached prompt tokens too, so with prefix caching the computed ones are
`prompt_tokens` - `prompt_tokens_cached`, and a request's own computed prompt is
vllm:request_prefill_kv_computed_tokens (absent: its whole prompt).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from kiban.capacity.fitting import EngineWindow

ITL_NAMES = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")  # new, old

# query key -> (metric names, new first; suffix)
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "engine_itl_sum": (ITL_NAMES, "_sum"),
    "engine_itl_count": (ITL_NAMES, "_count"),
    "engine_steps": (("vllm:iteration_tokens_total",), "_count"),
    "engine_prompt_tokens": (("vllm:prompt_tokens",), "_total"),
    "engine_prompt_tokens_cached": (("vllm:prompt_tokens_cached",), "_total"),
    "engine_first_tokens": (("vllm:time_to_first_token_seconds",), "_count"),
    "engine_prefill_sum": (("vllm:request_prefill_time_seconds",), "_sum"),
    "engine_prefill_count": (("vllm:request_prefill_time_seconds",), "_count"),
    "engine_request_prompt_sum": (("vllm:request_prompt_tokens",), "_sum"),
    "engine_request_prompt_count": (("vllm:request_prompt_tokens",), "_count"),
    "engine_request_computed_sum": (("vllm:request_prefill_kv_computed_tokens",), "_sum"),
    "engine_request_computed_count": (("vllm:request_prefill_kv_computed_tokens",), "_count"),
    "engine_queue_sum": (("vllm:request_queue_time_seconds",), "_sum"),
}
REQUIRED_FOR_WINDOW = ("engine_itl_sum", "engine_itl_count", "engine_steps", "engine_prompt_tokens")
MAX_COUNT = 1e9  # more of anything in one window than an engine can produce: a broken exporter
MAX_SECONDS = 1e7


class _Sample(Protocol):
    labels: Mapping[str, str]
    value: float


def engine_queries(selector: str, window: str) -> dict[str, str]:
    """{key: PromQL} per counter: its increase over `window` (a PromQL duration) per series that
    `selector` matches (empty: every model's)."""
    def series(name: str) -> str:
        return f"{name}{{{selector}}}" if selector else name

    return {key: " or ".join(f"increase({series(name + suffix)}[{window}])" for name in names)
            for key, (names, suffix) in COUNTERS.items()}


def engine_key(labels: Mapping[str, str]) -> tuple[str, str, str]:
    """An engine's identity in a model's answers: the scrape's namespace and instance, vLLM's engine."""
    return (labels.get("namespace", ""), labels.get("instance", ""), labels.get("engine", ""))


def _sane(value: float, high: float) -> float | None:
    return value if math.isfinite(value) and 0 <= value <= high else None


def engine_windows(answers: Mapping[str, Sequence[_Sample]], window_s: float,
                   mean_running: Mapping[tuple[str, str, str], float] | None = None) -> tuple[EngineWindow, ...]:
    """One model's EngineWindows, one per engine with every required counter in the answers
    (pure). A value no engine can produce (NaN, negative, absurd) drops that engine's window;
    an optional counter missing leaves its field as the fit's fallback asks (None or the whole
    prompt). `mean_running`: the batch gauge's average per engine, when collected."""
    values: dict[tuple[str, str, str], dict[str, float]] = {}
    broken: set[tuple[str, str, str]] = set()
    for key in COUNTERS:
        high = MAX_SECONDS if key.endswith("_sum") and "prompt" not in key and "computed" not in key else MAX_COUNT
        for sample in answers.get(key, ()):
            engine = engine_key(sample.labels)
            value = _sane(float(sample.value), high)
            if value is None:
                broken.add(engine)
                continue
            values.setdefault(engine, {})[key] = value
    windows = []
    for engine in sorted(values):
        got = values[engine]
        if engine in broken or any(k not in got for k in REQUIRED_FOR_WINDOW):
            continue
        prompt = got["engine_prompt_tokens"] - min(got.get("engine_prompt_tokens_cached", 0.0),
                                                    got["engine_prompt_tokens"])
        prefill_count = got.get("engine_prefill_count", 0.0)
        own_sum, own_count = got.get("engine_request_prompt_sum", 0.0), got.get("engine_request_prompt_count",
                                                                                 prefill_count)
        if got.get("engine_request_computed_count", 0.0) > 0:
            own_sum, own_count = got.get("engine_request_computed_sum", 0.0), got["engine_request_computed_count"]
        windows.append(EngineWindow(
            mean_running=(mean_running or {}).get(engine, 0.0),
            itl_sum_s=got["engine_itl_sum"], itl_count=got["engine_itl_count"], steps=got["engine_steps"],
            prompt_tokens=prompt, prefill_sum_s=got.get("engine_prefill_sum", 0.0), prefill_count=prefill_count,
            request_prompt_sum=own_sum, request_prompt_count=own_count,
            first_tokens=got.get("engine_first_tokens"), queue_sum_s=got.get("engine_queue_sum"),
            window_s=float(window_s)))
    return tuple(windows)
