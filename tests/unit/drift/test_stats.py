"""Each statistic against an independent computation on the raw samples behind the bins."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import kolmogorov
from scipy.stats import ks_2samp, ttest_ind

from kiban.drift import stats
from kiban.drift.histograms import bin_midpoints, bin_samples

EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


def _edge_samples(rng, weights, size):
    """Samples that sit exactly on bin edges, so binned and raw statistics must agree."""
    return rng.choice(np.array(EDGES), size=size, p=np.asarray(weights) / np.sum(weights))


def test_binned_ks_equals_scipy_on_raw_samples_sitting_on_edges():
    rng = np.random.default_rng(7)
    ref = _edge_samples(rng, [5, 4, 3, 2, 1, 1], 800)
    cur = _edge_samples(rng, [1, 2, 3, 4, 5, 5], 500)
    d = stats.ks_statistic(bin_samples(ref, EDGES).counts, bin_samples(cur, EDGES).counts)
    assert d == pytest.approx(ks_2samp(ref, cur).statistic, abs=1e-12)


def test_binned_ks_is_a_lower_bound_for_samples_inside_bins():
    rng = np.random.default_rng(3)
    ref, cur = rng.uniform(0, 60, 400), rng.uniform(5, 60, 400)
    d = stats.ks_statistic(bin_samples(ref, EDGES).counts, bin_samples(cur, EDGES).counts)
    assert 0 < d <= ks_2samp(ref, cur).statistic + 1e-12


@pytest.mark.parametrize("x", [0.05, 0.4, 0.9, 1.17, 1.19, 1.6, 2.5])
def test_kolmogorov_survival_matches_scipy(x):
    assert stats.kolmogorov_survival(x) == pytest.approx(kolmogorov(x), abs=1e-10)


def test_ks_p_value_tracks_scipy_asymptotic_p_value():
    rng = np.random.default_rng(11)
    ref, cur = rng.normal(0, 1, 3000), rng.normal(0.08, 1, 2000)
    raw = ks_2samp(ref, cur, method="asymp")
    ours = stats.ks_p_value(raw.statistic, ref.size, cur.size)
    assert ours == pytest.approx(raw.pvalue, rel=0.15)
    assert stats.ks_p_value(0.0, 100, 100) == 1.0


def test_js_equals_squared_scipy_jensenshannon_base_2():
    ref, cur = [10, 0, 30, 5, 5], [2, 8, 10, 0, 30]
    expected = jensenshannon(np.array(ref) / 50, np.array(cur) / 50, base=2) ** 2
    assert stats.jensen_shannon_divergence(ref, cur) == pytest.approx(expected, abs=1e-12)
    assert stats.jensen_shannon_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert stats.jensen_shannon_divergence([3, 4], [6, 8]) == pytest.approx(0.0)


def test_psi_by_hand_with_epsilon_for_empty_bins():
    # p = (0.5, 0.5, 0), q = (0.25, 0.5, 0.25); the empty reference bin is floored at 1e-4.
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + 0.0 + (0.25 - 1e-4) * math.log(0.25 / 1e-4)
    assert stats.population_stability_index([2, 2, 0], [1, 2, 1]) == pytest.approx(expected)
    assert stats.population_stability_index([5, 5, 5], [1, 1, 1]) == pytest.approx(0.0)


def test_mean_shift_matches_welch_on_the_bin_midpoints():
    ref_counts, cur_counts = np.array([30, 50, 20, 5, 0, 1, 0]), np.array([10, 30, 40, 20, 5, 2, 1])
    mids = bin_midpoints(EDGES)
    t, p = stats.mean_shift_p_value(ref_counts, cur_counts, mids)
    welch = ttest_ind(np.repeat(mids, cur_counts), np.repeat(mids, ref_counts), equal_var=False)
    assert t == pytest.approx(welch.statistic, rel=1e-9)
    assert p == pytest.approx(welch.pvalue, rel=1e-6)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="current holds no observations"):
        stats.population_stability_index([1, 2], [0, 0])
    with pytest.raises(ValueError, match="same bins"):
        stats.jensen_shannon_divergence([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="reference must hold finite"):
        stats.ks_statistic([-1, 2], [1, 2])


@pytest.mark.parametrize(("t", "df"), [(0.5, 3.0), (2.2, 12.5), (4.0, 150.0), (-3.1, 40.0)])
def test_student_t_tail_matches_scipy(t, df):
    from scipy.stats import t as student_t

    assert stats.student_t_two_sided_p(t, df) == pytest.approx(2 * student_t.sf(abs(t), df), rel=1e-8)
