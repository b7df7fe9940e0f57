"""Detector behaviour: stable on identical windows, K-consecutive declaration, clearing,
baseline capture per generation, and the service-time verdicts."""

from dataclasses import replace

import numpy as np
import pytest

from kiban.drift.detector import DetectorState, DriftConfig, WindowObservation, observe_window
from kiban.drift.histograms import BinnedHistogram, itl_seconds_buckets, token_count_buckets

TOKENS = token_count_buckets(8192)
ITL = itl_seconds_buckets()
WINDOW = 60.0


def _tokens(centre_bin: int, n: int = 1000) -> BinnedHistogram:
    """A bell-ish mix of token counts around one bucket."""
    weights = np.exp(-0.5 * ((np.arange(len(TOKENS) + 1) - centre_bin) / 1.2) ** 2)
    counts = np.round(n * weights / weights.sum())
    return BinnedHistogram(TOKENS, tuple(float(c) for c in counts))


def _itl(centre_bin: int, n: int = 1000) -> BinnedHistogram:
    counts = np.zeros(len(ITL) + 1)
    counts[centre_bin], counts[centre_bin + 1] = 0.7 * n, 0.3 * n
    return BinnedHistogram(ITL, tuple(float(c) for c in counts))


def _run(config, windows):
    state, out = DetectorState(), []
    for index, (generation, histograms, load) in enumerate(windows, start=1):
        state, assessment = observe_window(state, WindowObservation(index * WINDOW, generation, histograms, load), config)
        out.append(assessment)
    return out


CONV, CODE = _tokens(9), _tokens(11)  # ~ (200,500] vs (1000,2000] prompt tokens


@pytest.mark.parametrize("policy", ["rolling", "baseline"])
def test_identical_windows_never_drift(policy):
    config = DriftConfig(window_s=WINDOW, reference_policy=policy, settle_s=0)
    out = _run(config, [(1, {"prompt_tokens": CONV}, None)] * 8)
    assert not any(a.workload_drift for a in out)
    assert out[-1].reports["prompt_tokens"].status == "evaluated"
    assert out[-1].reports["prompt_tokens"].tests["psi"].score == pytest.approx(0.0)
    assert out[-1].reason == "NoDrift"


def test_shifted_window_is_declared_with_numbers_in_the_message():
    config = DriftConfig(window_s=WINDOW, rolling_windows=2)
    out = _run(config, [(1, {"prompt_tokens": CONV}, None)] * 3 + [(1, {"prompt_tokens": CODE}, None)])
    report = out[-1].reports["prompt_tokens"]
    assert report.drifted and report.declared and out[-1].refit_capacity_model
    assert out[-1].workload_drift and out[-1].reason == "WorkloadDrift"
    assert report.tests["psi"].score > config.psi_threshold
    assert "PSI" in report.message and "mean" in report.message and "tokens" in report.message
    assert report.current_mean > report.reference_mean


def test_k_consecutive_windows_before_declaring_and_m_to_clear():
    config = DriftConfig(window_s=WINDOW, reference_policy="baseline", settle_s=0,
                         rebaseline_after_drift=False, consecutive_to_declare=2, consecutive_to_clear=2)
    mix = [CONV, CONV, CODE, CONV, CODE, CODE, CODE, CONV, CONV, CONV]
    out = _run(config, [(1, {"prompt_tokens": h}, None) for h in mix])
    drifted = [a.reports["prompt_tokens"].drifted for a in out]
    declared = [a.reports["prompt_tokens"].declared for a in out]
    # window 1 is the baseline; one odd window is not enough, two in a row are; two calm ones clear.
    assert drifted == [False, False, False, False, False, True, True, True, False, False]
    assert declared.count(True) == 1 and declared[5]


def test_baseline_is_recaptured_after_settling_on_each_new_generation():
    config = DriftConfig(window_s=WINDOW, reference_policy="baseline", settle_s=WINDOW)
    windows = [(1, {"prompt_tokens": CONV}, None)] * 3 + [(2, {"prompt_tokens": CODE}, None)] * 4
    statuses = [a.reports["prompt_tokens"].status for a in _run(config, windows)]
    # gen 1: first window inside the settle time, second captured; gen 2 (window 4 starts the
    # change): settle, capture on a full window after it, then compared with the new baseline.
    assert statuses == ["no_reference", "baseline_captured", "evaluated",
                        "no_reference", "baseline_captured", "evaluated", "evaluated"]
    out = _run(config, windows)
    assert not any(a.workload_drift for a in out)


def test_slower_engine_after_a_spec_change_is_a_performance_regression():
    config = DriftConfig(window_s=WINDOW, reference_policy="baseline", settle_s=0)
    fast, slow = _itl(2), _itl(6)  # ~0.05 s vs ~0.2 s per token
    windows = [(1, {"prompt_tokens": CONV, "itl_seconds": fast}, 5.0)] * 3
    windows += [(2, {"prompt_tokens": CONV, "itl_seconds": slow}, 5.0)]
    last = _run(config, windows)[-1]
    assert last.performance_regression and last.reason == "PerformanceRegression"
    assert last.reports["itl_seconds"].kind == "service_time"
    assert "ms" in last.reports["itl_seconds"].message


def test_service_time_drift_without_spec_change_and_not_at_different_load():
    config = DriftConfig(window_s=WINDOW, rolling_windows=2, load_tolerance=0.25)
    fast, slow = _itl(2), _itl(6)
    base = [(1, {"prompt_tokens": CONV, "itl_seconds": fast}, 5.0)] * 8
    busier = _run(config, base + [(1, {"prompt_tokens": CONV, "itl_seconds": slow}, 9.0)])[-1]
    assert busier.reports["itl_seconds"].status == "incomparable_load" and not busier.service_time_drift
    same_load = _run(config, base + [(1, {"prompt_tokens": CONV, "itl_seconds": slow}, 5.2)])[-1]
    assert same_load.service_time_drift and not same_load.workload_drift
    assert same_load.reason == "ServiceTimeDrift" and not same_load.performance_regression


def test_small_windows_are_not_compared():
    config = DriftConfig(window_s=WINDOW, min_samples=100)
    out = _run(config, [(1, {"prompt_tokens": CONV}, None)] * 2 + [(1, {"prompt_tokens": _tokens(11, n=40)}, None)])
    assert out[-1].reports["prompt_tokens"].status == "insufficient_samples"
    assert not out[-1].workload_drift


def test_service_times_need_every_load_measure_comparable():
    """A load of (completions/s, prompt tokens/s, batch) per engine: the same batch but twice
    the prefill work is not a comparable load, and ITL is then not compared."""
    config = DriftConfig(window_s=WINDOW)
    fast, slow = _itl(3), _itl(5)
    base = [(1, {"prompt_tokens": CONV, "itl_seconds": fast}, (2.0, 2000.0, 6.0))] * 4
    more_prefill = _run(config, base + [(1, {"prompt_tokens": CONV, "itl_seconds": slow}, (2.0, 4000.0, 6.0))])[-1]
    assert more_prefill.reports["itl_seconds"].status == "incomparable_load" and not more_prefill.service_time_drift
    same = _run(config, base + [(1, {"prompt_tokens": CONV, "itl_seconds": slow}, (2.1, 2100.0, 6.2))])[-1]
    assert same.service_time_drift


def test_bad_config_and_signal_name_the_field():
    with pytest.raises(ValueError, match="DriftConfig.window_s"):
        DriftConfig(window_s=0)
    with pytest.raises(ValueError, match="DriftConfig.decisive_tests"):
        DriftConfig(decisive_tests=("chi2",))
    with pytest.raises(ValueError, match="DriftConfig.reference_policy"):
        replace(DriftConfig(), reference_policy="forever")
    with pytest.raises(ValueError, match="unknown drift signal 'latency'"):
        observe_window(DetectorState(), WindowObservation(60.0, 1, {"latency": CONV}), DriftConfig())


def test_sparse_windows_are_merged_into_the_next_and_compared():
    """Low traffic: two 40-request windows of a new mix together reach min_samples 60, so the
    second compares them as one against the reference of full windows (and declares)."""
    config = DriftConfig(window_s=WINDOW, min_samples=60, rolling_windows=2)
    sparse_code = _tokens(11, n=40)
    out = _run(config, [(1, {"prompt_tokens": CONV}, None)] * 3 + [(1, {"prompt_tokens": sparse_code}, None)] * 2)
    assert out[-2].reports["prompt_tokens"].status == "insufficient_samples"
    merged = out[-1].reports["prompt_tokens"]
    assert merged.status == "evaluated" and merged.declared and out[-1].refit_capacity_model
    assert merged.current_count == pytest.approx(2 * sparse_code.total)
    assert merged.reference_count == pytest.approx(2 * CONV.total)  # the full windows only


def test_a_sparse_window_never_joins_the_rolling_reference():
    """Sparse windows of a new mix, each alone under min_samples and never merged into a
    comparable one (max_merged_windows 1): the reference stays the last full windows."""
    config = DriftConfig(window_s=WINDOW, min_samples=60, rolling_windows=2, max_merged_windows=1)
    windows = [(1, {"prompt_tokens": CONV}, None)] * 2 + [(1, {"prompt_tokens": _tokens(11, n=40)}, None)] * 3
    out = _run(config, windows + [(1, {"prompt_tokens": CODE}, None)])
    assert all(a.reports["prompt_tokens"].status == "insufficient_samples" for a in out[2:5])
    last = out[-1].reports["prompt_tokens"]
    assert last.declared and last.reference_count == pytest.approx(2 * CONV.total)


def test_merging_stops_at_max_merged_windows():
    config = DriftConfig(window_s=WINDOW, min_samples=100, rolling_windows=2, max_merged_windows=2)
    sparse = _tokens(9, n=40)
    out = _run(config, [(1, {"prompt_tokens": CONV}, None)] * 2 + [(1, {"prompt_tokens": sparse}, None)] * 4)
    n = sparse.total
    assert [a.reports["prompt_tokens"].current_count for a in out[2:]] == pytest.approx([n, 2 * n, 2 * n, 2 * n])
    assert all(a.reports["prompt_tokens"].status == "insufficient_samples" for a in out[2:])


def _sample(rng, proportions, n):
    return BinnedHistogram(TOKENS, tuple(float(c) for c in rng.multinomial(n, proportions)))


def test_small_windows_of_one_mix_do_not_alarm_but_a_real_switch_does():
    """Windows of 15 requests against a 30-request reference, drawn from one mix: with the
    configured thresholds alone PSI/JS cross them in most windows (the noise of small samples);
    held against the noise floor, at most a few alarms in 300 trials. A mix three buckets away
    (about conv -> code in output tokens) at the same sizes is still declared almost always."""
    rng = np.random.default_rng(7)
    conv = np.asarray(CONV.counts) / CONV.total
    far = _tokens(12)
    code = np.asarray(far.counts) / far.total
    config = DriftConfig(window_s=WINDOW, min_samples=15, rolling_windows=2)
    naive = replace(config, noise_quantile=1e-9)  # the floor never above the threshold
    alarms = naive_alarms = declared = 0
    for _ in range(300):
        reference = [(1, {"prompt_tokens": _sample(rng, conv, 15)}, None) for _ in range(2)]
        same = reference + [(1, {"prompt_tokens": _sample(rng, conv, 15)}, None)]
        alarms += _run(config, same)[-1].workload_drift
        naive_alarms += _run(naive, same)[-1].workload_drift
        switched = reference + [(1, {"prompt_tokens": _sample(rng, code, 15)}, None)]
        declared += _run(config, switched)[-1].workload_drift
    assert naive_alarms > 150
    assert alarms <= 6
    assert declared >= 285


def test_itl_carries_the_evidence_of_its_requests_not_of_its_tokens():
    """The same ITL shift (70/30 -> 20/80 over two buckets, PSI ~1.1; 4,000 token samples a
    window) at the same load: from 8 requests a window it is within the noise of so few
    requests; from 2,000 it is drift. The report counts requests."""
    config = DriftConfig(window_s=WINDOW, min_samples=5, rolling_windows=2)

    def itl(first_share):
        counts = np.zeros(len(ITL) + 1)
        counts[5], counts[6] = 4000 * first_share, 4000 * (1 - first_share)
        return BinnedHistogram(ITL, tuple(float(c) for c in counts))

    def windows(requests):
        prompts = _tokens(9, n=requests)
        calm = [(1, {"prompt_tokens": prompts, "itl_seconds": itl(0.7)}, 5.0)] * 3
        return calm + [(1, {"prompt_tokens": prompts, "itl_seconds": itl(0.2)}, 5.0)]

    few, many = _run(config, windows(8))[-1], _run(config, windows(2000))[-1]
    assert few.reports["itl_seconds"].status == "evaluated" and not few.service_time_drift
    assert few.reports["itl_seconds"].current_count == pytest.approx(_tokens(9, n=8).total)
    assert many.service_time_drift and many.reason in ("ServiceTimeDrift", "PerformanceRegression")
    assert few.reports["itl_seconds"].tests["psi"].score == pytest.approx(many.reports["itl_seconds"].tests["psi"].score)
    assert few.reports["itl_seconds"].tests["psi"].score > config.psi_threshold


def test_a_change_of_fleet_size_restarts_the_service_time_reference():
    """ITL slow on one replica, faster once a second one serves: the window that held both sizes
    and the first at two replicas are not compared with the one-replica windows; the token
    signals are compared throughout."""
    config = DriftConfig(window_s=WINDOW, rolling_windows=2)
    slow, fast = _itl(5), _itl(3)

    def window(itl, replicas):
        return WindowObservation(0.0, 1, {"prompt_tokens": CONV, "itl_seconds": itl}, 5.0, replicas)

    state, out = DetectorState(), []
    for index, (itl, replicas) in enumerate([(slow, (1, 1))] * 3 + [(fast, (1, 2))] + [(fast, (2, 2))] * 3, start=1):
        state, assessment = observe_window(state, replace(window(itl, replicas), end_time=index * WINDOW), config)
        out.append(assessment)
    statuses = [a.reports["itl_seconds"].status for a in out]
    assert statuses[3] == "incomparable_load" and "the fleet changed (1 → 1-2 replicas)" in out[3].reports["itl_seconds"].message
    assert statuses[4] == "no_reference" and statuses[5] == "evaluated"
    assert not any(a.service_time_drift for a in out)
    assert all(a.reports["prompt_tokens"].status == "evaluated" for a in out[1:])
    # without the fleet sizes the same windows read as a faster engine
    plain = DetectorState()
    for index, (itl, _) in enumerate([(slow, None)] * 3 + [(fast, None)], start=1):
        plain, last = observe_window(plain, replace(window(itl, None), end_time=index * WINDOW), config)
    assert last.service_time_drift
