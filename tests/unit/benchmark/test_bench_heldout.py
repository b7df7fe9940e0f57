"""The held-out material Kiban's constants are chosen on: its transforms, its variant syntax,
and that none of it is a cell the matrix scores."""

from __future__ import annotations

import numpy as np
import pytest

from kiban_dev.benchmark import heldout, matrix
from kiban_dev.benchmark.traces import Trace


def _trace(arrivals: list[float], prompts: list[int]) -> Trace:
    return Trace(name="t", arrival_s=np.array(arrivals, dtype=float), prompt_tokens=np.array(prompts, dtype=np.int64),
                 output_tokens=np.ones(len(arrivals), dtype=np.int64))


def test_compress_bursts_keeps_each_minutes_count_in_its_first_half() -> None:
    trace = _trace([0.0, 10.0, 59.0, 60.0, 90.0, 150.0], [1] * 6)
    out = heldout.compress_bursts(trace)
    assert out.arrival_s.tolist() == [0.0, 5.0, 29.5, 60.0, 75.0, 135.0]
    assert np.all(np.diff(out.arrival_s) >= 0)
    assert np.bincount((out.arrival_s // 60).astype(int)).tolist() == np.bincount((trace.arrival_s // 60).astype(int)).tolist()


def test_scale_prompts_multiplies_prompts_only() -> None:
    trace = _trace([0.0, 1.0], [100, 7])
    out = heldout.scale_prompts(trace, 3.0)
    assert out.prompt_tokens.tolist() == [300, 21]
    assert out.arrival_s.tolist() == [0.0, 1.0] and out.output_tokens.tolist() == [1, 1]


def test_variants_parse_and_a_wrong_field_is_named() -> None:
    assert heldout.parse_variant("default") == {}
    assert heldout.parse_variant("burst_overflow=0.0025,burst_floor_fade=false") == {
        "burst_overflow": 0.0025, "burst_floor_fade": False}
    assert heldout.parse_variant("token_window_s=900") == {"token_window_s": 900.0}  # a collector window
    with pytest.raises(ValueError, match="token_window_s"):
        heldout.parse_variant("token_window_s=1200")  # longer than the fleet's stand-in keeps
    with pytest.raises(ValueError, match="burst_windw_s"):
        heldout.parse_variant("burst_windw_s=10")
    with pytest.raises(ValueError, match="max_replicas"):
        heldout.parse_variant("max_replicas=3")


def test_no_material_is_a_scored_cell() -> None:
    assert heldout.HELDOUT_RATE not in matrix.RATES
    for m in heldout.MATERIAL:
        assert m.seed not in matrix.SEEDS
        assert m.transform in heldout.TRANSFORMS
    # and the trace half differs: the matrix plays whole traces
    assert heldout.material_run(heldout.MATERIAL[0]).bench.part == "second-half"
