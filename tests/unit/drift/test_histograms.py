"""Histogram window deltas, merging and vLLM's bucket boundaries."""

import numpy as np
import pytest

from kiban.drift.histograms import (
    BinnedHistogram,
    bin_samples,
    build_1_2_5_buckets,
    cumulative_buckets,
    itl_seconds_buckets,
    merge_histograms,
    prefill_seconds_per_token_buckets,
    token_count_buckets,
    ttft_seconds_buckets,
    window_counts,
    window_counts_by_series,
)


def test_1_2_5_buckets_follow_vllm():
    assert build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
    assert build_1_2_5_buckets(4096)[-1] == 2000
    assert token_count_buckets(32768)[-3:] == (5000.0, 10000.0, 20000.0)


def test_latency_buckets_are_vllm_033_lists():
    assert len(ttft_seconds_buckets()) == 22 and ttft_seconds_buckets()[-1] == 2560.0
    assert itl_seconds_buckets()[:3] == (0.01, 0.025, 0.05) and len(itl_seconds_buckets()) == 19
    bounds = prefill_seconds_per_token_buckets()
    assert list(bounds) == sorted(bounds) and bounds[0] == 1e-6 and bounds[-1] == 0.1


def test_window_counts_is_the_delta_of_two_scrapes():
    earlier = [("1.0", 2), ("2.0", 5), ("+Inf", 6)]
    later = [("+Inf", 16), ("1.0", 3), ("2.0", 10)]  # order does not matter
    window = window_counts(earlier, later, earlier_sum=10.0, later_sum=40.0)
    assert window.upper_bounds == (1.0, 2.0)
    assert window.counts == (1.0, 4.0, 5.0)
    assert window.total_sum == 30.0 and window.mean() == 3.0


def test_counter_reset_takes_the_later_scrape_as_the_whole_window():
    earlier = [("1.0", 50), ("2.0", 80), ("+Inf", 90)]
    later = [("1.0", 3), ("2.0", 4), ("+Inf", 7)]  # the pod restarted
    assert window_counts(earlier, later).counts == (3.0, 1.0, 3.0)


def test_new_series_counts_from_zero_and_series_merge_over_pods():
    earlier = {"pod-a": [("1", 1), ("+Inf", 2)]}
    later = {"pod-a": [("1", 4), ("+Inf", 6)], "pod-b": [("1", 1), ("+Inf", 1)]}
    assert window_counts_by_series(earlier, later).counts == (4.0, 1.0)


def test_bad_buckets_name_the_problem():
    with pytest.raises(ValueError, match=r"\+Inf"):
        window_counts(None, [("1", 1)])
    with pytest.raises(ValueError, match="must not decrease"):
        window_counts(None, [("1", 5), ("+Inf", 2)])
    with pytest.raises(ValueError, match="le buckets differ"):
        window_counts([("1", 0), ("+Inf", 0)], [("2", 0), ("+Inf", 0)])
    with pytest.raises(ValueError, match="counts must have"):
        BinnedHistogram((1.0,), (1.0,))
    with pytest.raises(ValueError, match="upper_bounds differ"):
        merge_histograms([BinnedHistogram((1.0,), (1, 1)), BinnedHistogram((2.0,), (1, 1))])


def test_bin_samples_uses_le_semantics_and_round_trips_through_cumulative_buckets():
    samples = [1, 1.5, 2, 2, 7, 100]
    hist = bin_samples(samples, (1.0, 2.0, 5.0, 10.0))
    assert hist.counts == (1.0, 3.0, 0.0, 1.0, 1.0)  # a sample equal to le falls in that bucket
    again = window_counts(None, cumulative_buckets(hist))
    assert again.counts == hist.counts
    assert np.isclose(hist.mean(), np.mean(samples))
