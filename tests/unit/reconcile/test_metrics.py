"""OperatorMetrics: the names in docs/metrics.md, one registry per instance."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kiban.metrics import ModelKey, OperatorMetrics

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
KEY = ModelKey("team", "llama", "llama-3-8b")


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `(kiban_[a-z0-9_]+)`", DOC.read_text(), flags=re.M))


def exposed_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_every_documented_metric_is_defined_and_nothing_else():
    assert exposed_names(OperatorMetrics().registry) == documented_names()


def test_instances_do_not_share_series():
    first, second = OperatorMetrics(), OperatorMetrics()
    first.record_reconcile(succeeded=True, seconds=0.2)
    assert first.registry.get_sample_value("kiban_reconcile_total", {"result": "success"}) == 1
    assert second.registry.get_sample_value("kiban_reconcile_total", {"result": "success"}) is None


def test_reconcile_errors_and_duration_are_recorded():
    metrics = OperatorMetrics()
    metrics.record_reconcile(succeeded=False, seconds=1.5)
    assert metrics.registry.get_sample_value("kiban_reconcile_total", {"result": "error"}) == 1
    assert metrics.registry.get_sample_value("kiban_reconcile_duration_seconds_sum") == 1.5


def test_model_gauges_carry_join_labels_and_are_forgotten_on_delete():
    metrics = OperatorMetrics()
    metrics.set_model_gauge("ready_replicas", KEY, 2)
    metrics.set_model_gauge("slo_ttft_seconds", KEY, 0.5, percentile="p95")
    metrics.count_scale_event(KEY, "up")
    labels = {"namespace": "team", "foundationmodel": "llama", "model_name": "llama-3-8b"}
    assert metrics.registry.get_sample_value("kiban_ready_replicas", labels) == 2
    assert metrics.registry.get_sample_value("kiban_slo_ttft_seconds", {**labels, "percentile": "p95"}) == 0.5
    metrics.forget_model("team", "llama")
    text = generate_latest(metrics.registry).decode()
    assert 'foundationmodel="llama"' not in text


def test_wrong_extra_labels_name_the_gauge():
    metrics = OperatorMetrics()
    with pytest.raises(ValueError, match="slo_ttft_seconds"):
        metrics.set_model_gauge("slo_ttft_seconds", KEY, 1.0)
    with pytest.raises(ValueError, match="unknown per-model gauge"):
        metrics.set_model_gauge("nope", KEY, 1.0)
