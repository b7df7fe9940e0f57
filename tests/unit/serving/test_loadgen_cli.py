"""kiban-load command line: input errors are reported before any request is sent."""

from __future__ import annotations

from kiban_serving.loadgen.cli import main


def test_bad_trace_row_reports_file_and_line(tmp_path, capsys):
    trace = tmp_path / "bad.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,many,109\n"
    )
    code = main(["--url", "http://127.0.0.1:9", "--model", "m", "--trace", str(trace), "--no-progress"])
    assert code == 2
    assert f"{trace}:3: ContextTokens must be an integer" in capsys.readouterr().err


def test_poisson_needs_a_duration(capsys):
    assert main(["--url", "http://127.0.0.1:9", "--model", "m", "--poisson-rps", "1"]) == 2
    assert "--duration-s" in capsys.readouterr().err


def test_bad_rate_multiplier_is_named(tmp_path, capsys):
    code = main(["--url", "http://127.0.0.1:9", "--model", "m", "--poisson-rps", "1", "--duration-s", "1",
                 "--rate-multiplier", "0"])  # fmt: skip
    assert code == 2 and "rate multiplier" in capsys.readouterr().err
