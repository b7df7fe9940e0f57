"""The matrix's cells: each one's GPUs per replica, selecting some cells, and keeping finished
cells so a run can resume."""

from __future__ import annotations

from pathlib import Path

from kiban_dev.benchmark import matrix, report
from kiban_dev.benchmark.run import BenchConfig, Row


def test_a_cell_counts_the_gpus_its_own_profile_needs() -> None:
    base = BenchConfig()  # A100-80GB/8B: one GPU per replica
    assert base.gpus_per_replica == 1
    big = matrix.cell_config(base, matrix.Cell("conv", "nvidia-h100-80gb/70B", 4.0))
    # the sizing: a 70B model at TP 4 bills four GPUs per replica
    assert (big.profile, big.rate_factor, big.gpus_per_replica) == ("nvidia-h100-80gb/70B", 4.0, 4)
    assert matrix.cell_config(big, matrix.Cell("conv", "nvidia-l4/8B", 1.0)).gpus_per_replica == 1


def test_cells_can_be_selected_by_trace_profile_and_rate() -> None:
    full = matrix.cells()
    assert len(full) == len(matrix.RATES) * len(matrix.PROFILES) * 3
    some = matrix.cells(traces=("code",), rates=(1.0,))
    assert {(c.trace, c.rate_factor) for c in some} == {("code", 1.0)}
    assert {c.profile for c in some} == set(matrix.PROFILES)
    assert matrix.cells(profiles=("no-such/1B",)) == []
    assert len({matrix.cell_slug(c) for c in full}) == len(full)


def test_kept_cells_read_back_as_the_rows_written(tmp_path: Path) -> None:
    rows = [Row(trace="conv", family="kiban", policy="kiban", gpu_hours=1.5, ttft_slo_attainment=0.995,
                p95_ttft_s=0.4, p99_ttft_s=1.2, p95_tpot_s=None, scale_events=3, max_replicas=4,
                mean_replicas=2.5, seed=1, profile="nvidia-l4/8B", engine={"alpha_ms_true": 9.0})]
    report.write_json(rows, tmp_path / "cells" / "a.json")
    back = report.read_cells(tmp_path / "cells")
    assert [r.public() for r in back] == [r.public() for r in rows]


def test_the_report_names_every_cell_it_holds_no_row_of(tmp_path: Path, monkeypatch) -> None:
    """A stale cell file from an earlier run does not count as run unless --resume reads it."""
    from kiban_dev.benchmark import cli

    conv = Row(trace="conv", family="kiban", policy="kiban", gpu_hours=1.0, ttft_slo_attainment=1.0,
               p95_ttft_s=0.1, p99_ttft_s=0.2, p95_tpot_s=None, scale_events=0, max_replicas=1,
               mean_replicas=1.0, profile="nvidia-a100-80gb/8B", rate_factor=1.0)
    stale = Row(**{**conv.public(), "trace": "code"})
    report.write_json([stale], tmp_path / "cells" / "code__nvidia-a100-80gb_8B__x1.json")
    monkeypatch.setattr(matrix, "run_matrix", lambda *a, **k: [conv])
    assert cli.main(["--matrix", "--quick", "--traces", "conv", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "matrix.md").read_text()
    assert "Not run (1 cells of the matrix):** code / nvidia-a100-80gb/8B / x1" in text
