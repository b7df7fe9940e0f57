"""Azure trace reading, slicing, Poisson arrivals and rate scaling."""

from __future__ import annotations

import pytest

from kiban_serving.loadgen.trace import (
    TraceFormatError,
    TraceRequest,
    compress_time,
    multiply_rate,
    parse_timestamp,
    poisson_requests,
    read_azure_trace,
)

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path, rows: str):
    path = tmp_path / "trace.csv"
    path.write_text(HEADER + rows)
    return path


def test_seven_digit_fractional_seconds_are_parsed():
    a = parse_timestamp("2023-11-16 18:15:46.6805900")
    b = parse_timestamp("2023-11-16 18:15:47.0000001")
    assert b - a == pytest.approx(0.3194101, abs=1e-6)


def test_reads_rows_relative_to_first_arrival(tmp_path):
    path = write(tmp_path, "2023-11-16 18:15:46.5,374,44\n2023-11-16 18:15:48.0,10,2\n")
    assert read_azure_trace(path) == [TraceRequest(0.0, 374, 44), TraceRequest(1.5, 10, 2)]


def test_time_window_and_row_slice(tmp_path):
    rows = "".join(f"2023-11-16 18:00:{s:02d}.0,{s + 1},1\n" for s in range(10))
    path = write(tmp_path, rows)
    window = read_azure_trace(path, start_s=3, duration_s=4)
    assert [r.prompt_tokens for r in window] == [4, 5, 6, 7]
    assert window[0].arrival_s == 0.0
    sliced = read_azure_trace(path, first_row=2, max_rows=3)
    assert [r.prompt_tokens for r in sliced] == [3, 4, 5]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("2023-11-16 18:15:47.0,abc,2", "ContextTokens must be an integer"),
        ("2023-11-16 18:15:47.0,5", "expected 3 columns"),
        ("not a time,5,2", "bad TIMESTAMP"),
        ("2023-11-16 18:15:47.0,5,-1", "GeneratedTokens must be >= 0"),
    ],
)
def test_bad_row_error_names_file_and_line(tmp_path, row, message):
    path = write(tmp_path, "2023-11-16 18:15:46.0,1,1\n" + row + "\n")
    with pytest.raises(TraceFormatError, match=message) as info:
        read_azure_trace(path)
    assert f"{path}:3:" in str(info.value)


def test_bad_header_is_reported(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n")
    with pytest.raises(TraceFormatError, match=":1: expected header"):
        read_azure_trace(path)


def test_poisson_rate_and_determinism():
    a = poisson_requests(50, 100, 10, 5, seed=3)
    assert a == poisson_requests(50, 100, 10, 5, seed=3)
    assert len(a) == pytest.approx(5000, rel=0.05)
    assert all(0 <= r.arrival_s < 100 for r in a)
    with pytest.raises(ValueError, match="rate_rps"):
        poisson_requests(0, 1, 1, 1)


def test_compress_time_and_rate_multiplier():
    base = poisson_requests(20, 50, 10, 5, seed=1)
    fast = compress_time(base, 10)
    assert fast[-1].arrival_s == pytest.approx(base[-1].arrival_s / 10)
    double = multiply_rate(base, 2.0, seed=1)
    half = multiply_rate(base, 0.5, seed=1)
    assert len(double) == 2 * len(base)
    assert len(half) == pytest.approx(len(base) / 2, rel=0.15)
    assert double == sorted(double, key=lambda r: r.arrival_s)
    with pytest.raises(ValueError, match="time_scale"):
        compress_time(base, 0)
