"""`kiban drift eval` on small slices of the real Azure traces (read in place, sliced to tmp)."""

import argparse
import json
from itertools import islice
from pathlib import Path

import pytest

from kiban_dev.drift_eval import cli
from kiban_dev.drift_eval.evaluate import concatenate, load_azure_trace, window_edges
from kiban_dev.shared_paths import azure_trace_dir

TRACES = azure_trace_dir()


def _slice(name: str, rows: int, directory: Path) -> Path:
    source = TRACES / f"{name}.csv"
    if not source.exists():
        pytest.fail(f"real trace {source} is missing")
    target = directory / f"{name}.csv"
    with source.open() as handle:
        target.write_text("".join(islice(handle, rows + 1)))
    return target


def _parse(argv):
    parser = argparse.ArgumentParser(prog="kiban")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_eval_writes_detection_and_false_alarm_keys(tmp_path, capsys):
    conv, code = _slice("conv", 4000, tmp_path), _slice("code", 2000, tmp_path)
    out = tmp_path / "drift.json"
    args = _parse(["drift", "eval", "--trace", str(conv), "--trace", str(code),
                   "--window-s", "120", "--seed", "3", "--json", str(out)])
    assert args.func(args) == 0

    result = json.loads(out.read_text())
    assert result["window_s"] == 120.0 and result["seed"] == 3
    assert 0 <= result["phase_s"] < 120
    assert result["switch_s"] == pytest.approx(load_azure_trace(conv).duration_s)
    rows = {(r["test"], r["signal"]): r for r in result["results"]}
    for test in ("default", "psi", "js", "ks", "mean_shift", "raw_ks"):
        for signal in ("prompt_tokens", "generation_tokens"):
            row = rows[(test, signal)]
            for key in ("detection_delay_s", "false_alarms_per_day", "false_alarms", "windows",
                        "windows_stationary", "windows_evaluated"):
                assert key in row
    # conv -> code moves the generated-token mix a lot: the default detector must see it.
    delay = rows[("default", "generation_tokens")]["detection_delay_s"]
    assert delay is not None and 0 < delay <= 300
    assert "default(psi+js)" in capsys.readouterr().out


def test_trace_b_is_played_where_a_ends_and_windows_are_full(tmp_path):
    a = load_azure_trace(_slice("conv", 300, tmp_path))
    b = load_azure_trace(_slice("code", 300, tmp_path))
    joined, switch = concatenate(a, b)
    assert switch == a.duration_s and joined.times_s[a.times_s.size] == switch
    edges = window_edges(joined.duration_s, 30.0, phase_s=10.0)
    assert edges[0] == -10.0 and edges[-1] <= joined.duration_s


def test_eval_rejects_one_trace_and_bad_columns(tmp_path):
    conv = _slice("conv", 50, tmp_path)
    args = _parse(["drift", "eval", "--trace", str(conv), "--json", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="exactly twice"):
        args.func(args)
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,Prompt\n2023-11-16 18:15:46.6805900,3\n")
    with pytest.raises(ValueError, match="ContextTokens"):
        load_azure_trace(bad)
