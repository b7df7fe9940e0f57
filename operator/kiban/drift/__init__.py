"""Workload and service-time drift from vLLM's Prometheus histograms (pure; no I/O).

`histograms` turns two scrapes of cumulative buckets into a window's per-bin counts,
`stats` scores two windows, `detector` keeps the reference and declares drift, `tracker` is
the autoscaler's per-model drift step (windows in; condition, status, Events and re-fit out).
Measuring the detector on real traces is developer tooling: kiban_dev.drift_eval.
"""

from kiban.drift.detector import (
    SIGNALS,
    TESTS,
    DetectorState,
    DriftAssessment,
    DriftConfig,
    DriftReport,
    WindowObservation,
    observe_window,
)
from kiban.drift.histograms import BinnedHistogram, merge_histograms, window_counts, window_counts_by_series

__all__ = [
    "SIGNALS",
    "TESTS",
    "BinnedHistogram",
    "DetectorState",
    "DriftAssessment",
    "DriftConfig",
    "DriftReport",
    "WindowObservation",
    "merge_histograms",
    "observe_window",
    "window_counts",
    "window_counts_by_series",
]
