"""kiban-bench --quick and --matrix --quick on the real Azure traces (read in place): the rows
and keys of the JSON contract, the clairvoyant reference row and its bar keys, and identical
results for the same seed. Quick mode's numbers mean nothing (short slices, untuned peers), so
nothing here checks one; the full matrix (make bench) carries the claims."""

from __future__ import annotations

import json
from pathlib import Path

from kiban_dev.benchmark import cli
from kiban_dev.benchmark.run import DEFAULT_TRACE_DIR

FAMILIES = {"oracle", "clairvoyant", "kiban", "static-peak", "kubeai", "knative-kpa", "production-stack-keda",
            "aibrix-apa", "llm-d", "dynamo"}
BAR_KEYS = {"clairvoyant_gpu_hours", "clairvoyant_attainment", "clairvoyant_over_oracle",
            "oracle_bar_reachable_with_foresight"}


def test_quick_run_on_the_standard_traces(tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert cli.main(["--quick", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert {r["trace"] for r in rows} == {"conv", "code", "conv+code"}
    for trace in ("conv", "code", "conv+code"):
        mine = [r for r in rows if r["trace"] == trace]
        assert {r["family"] for r in mine if r["chosen"]} == FAMILIES
        for row in mine:
            assert {"policy", "gpu_hours", "ttft_slo_attainment", "p95_ttft_s", "unattainable_share"} <= row.keys()
            assert 0.0 <= row["ttft_slo_attainment"] <= 1.0
        foresight = [r for r in mine if r["family"] == "clairvoyant"]
        assert len(foresight) == 1 and foresight[0]["complete"], trace
        assert [r["family"] for r in mine][:2] == ["oracle", "clairvoyant"]
    bar = json.loads((out / "bar.json").read_text())
    assert [b["trace"] for b in bar] == ["conv", "code", "conv+code"]
    for check in bar:
        assert BAR_KEYS <= check.keys(), check["trace"]
        assert check["oracle_bar_reachable_with_foresight"] == (
            check["clairvoyant_over_oracle"] <= 1.2 and check["clairvoyant_attainment"] >= 0.99)
        assert "clairvoyant" not in str(check.get("cheapest_peer", ""))
    for name in ("results.md", "bar.json", "gpu_hours_vs_attainment.png", "replicas_conv.png"):
        assert (out / name).stat().st_size > 0


def test_same_seed_same_results(tmp_path: Path) -> None:
    conv = str(DEFAULT_TRACE_DIR / "conv.csv")
    texts = []
    for name in ("a.json", "b.json"):
        assert cli.main(["--trace", conv, "--quick", "--seed", "5", "--json", str(tmp_path / name)]) == 0
        texts.append((tmp_path / name).read_text())
    assert texts[0] == texts[1]
    assert json.loads(texts[0])


def test_matrix_quick_writes_every_family_per_cell_and_seed(tmp_path: Path) -> None:
    """--matrix --quick: its cells, two seeds each, every family chosen once per seed, the engine
    facts on Kiban's rows, unattainable_share on every row, and a summary with the bar keys."""
    from kiban_dev.benchmark.matrix import QUICK_CELLS, QUICK_SEEDS

    out = tmp_path / "matrix"
    assert cli.main(["--matrix", "--quick", "--out", str(out)]) == 0
    rows = json.loads((out / "matrix.json").read_text())
    cells = {(r["trace"], r["profile"], r["rate_factor"]) for r in rows}
    assert cells == {tuple(c) for c in QUICK_CELLS}
    for cell in cells:
        mine = [r for r in rows if (r["trace"], r["profile"], r["rate_factor"]) == cell]
        for seed in QUICK_SEEDS:
            chosen = [r for r in mine if r["seed"] == seed and r["chosen"]]
            assert {r["family"] for r in chosen} == FAMILIES, (cell, seed)
            assert len([r for r in chosen if r["family"] == "kiban"]) == 1
        for row in mine:
            assert 0.0 <= row["unattainable_share"] < 1.0
            assert 0.0 <= row["ttft_slo_attainment"] <= 1.0
        for kiban in (r for r in mine if r["family"] == "kiban"):
            engine = kiban["engine"]
            assert {"alpha_ms_true", "alpha_ms_prior", "alpha_ms_learned", "cold_start_true_s",
                    "cold_start_learned_s"} <= engine.keys()
            assert 60.0 <= engine["cold_start_true_s"] <= 300.0 * 1.1
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cells"]) == len(QUICK_CELLS)
    for cell in summary["cells"]:
        assert {"kiban_gpu_hours", "kiban_attainment", "kiban_meets_slo"} <= cell["bar"].keys()
        assert "static-peak" not in str(cell["bar"].get("cheapest_peer", ""))
    assert "Kiban ÷ clairvoyant" in (out / "matrix.md").read_text()
