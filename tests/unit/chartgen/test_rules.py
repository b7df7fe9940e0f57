"""The chart's Prometheus rules: generated consistently, valid for promtool, and behaving as
tests/unit/chartgen/rules_test.yaml says (promtool's own rule unit tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kiban_dev.devcluster.tools import ToolsMissingError, tool_path
from kiban_dev.chartgen import rules

ROOT = Path(__file__).resolve().parents[3]
RULES_FILE = ROOT / "charts" / "kiban" / "files" / "rules" / "kiban.rules.yaml"
RULES_TEST = Path(__file__).with_name("rules_test.yaml")


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return tool_path("promtool")
    except ToolsMissingError as exc:
        pytest.fail(f"promtool is needed: {exc}", pytrace=False)


def run(promtool: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120)


def test_chart_rule_file_is_what_rules_py_generates():
    assert RULES_FILE.read_text() == rules.render_rules_yaml(), "run: python hack/chart/sync.py"


def test_promtool_check_rules_accepts_the_rule_file(promtool):
    result = run(promtool, "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(promtool, tmp_path):
    """The same tests against rules whose fast burn threshold is doubled must fail."""
    broken = RULES_FILE.read_text().replace("> 0.72", "> 1.44")
    assert broken != RULES_FILE.read_text()
    (tmp_path / "charts" / "kiban" / "files" / "rules").mkdir(parents=True)
    (tmp_path / "charts" / "kiban" / "files" / "rules" / "kiban.rules.yaml").write_text(broken)
    nested = tmp_path / "tests" / "unit" / "observability"
    nested.mkdir(parents=True)
    (nested / "rules_test.yaml").write_text(RULES_TEST.read_text())
    result = run(promtool, "test", "rules", str(nested / "rules_test.yaml"))
    assert result.returncode != 0
    assert "KibanTTFTErrorBudgetBurnFast" in result.stdout + result.stderr


def test_every_alert_named_in_the_brief_exists_with_severity_and_runbook():
    alerts = {r["alert"]: r for g in rules.rule_groups() for r in g["rules"] if "alert" in r}
    assert set(alerts) == {
        "KibanTTFTErrorBudgetBurnFast", "KibanTTFTErrorBudgetBurnSlow", "KibanScalingLimited",
        "KibanMetricsUnavailable", "KibanDriftDetected", "KibanReconcileErrors",
    }
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["runbook_url"].endswith("#" + name.lower())
    assert alerts["KibanScalingLimited"]["for"] == "15m"
    assert alerts["KibanMetricsUnavailable"]["for"] == "10m"


def test_burn_rate_thresholds_follow_the_percentile_objective():
    fast = rules.burn_rate_expr(rules.BURN_RATE_ALERTS[0])
    slow = rules.burn_rate_expr(rules.BURN_RATE_ALERTS[1])
    # p99 objective: 1 % budget; p95: 5 %
    assert 'ratio_rate1h{percentile="p99"} > 0.144' in fast and 'ratio_rate5m{percentile="p99"} > 0.144' in fast
    assert 'ratio_rate1h{percentile="p95"} > 0.72' in fast
    assert 'ratio_rate6h{percentile="p99"} > 0.06' in slow and 'ratio_rate30m{percentile="p95"} > 0.3' in slow


@pytest.mark.parametrize(("boundary", "spellings"), [(0.5, ("0.5",)), (1.0, ("1.0", "1")), (2560.0, ("2560.0", "2560"))])
def test_le_spellings_cover_prometheus_client_and_prometheus_3(boundary, spellings):
    assert rules.le_label_values(boundary) == spellings


def test_selected_bucket_rejects_unsorted_buckets():
    with pytest.raises(ValueError, match="increasing"):
        rules.selected_bucket_expr((0.5, 0.1))


def test_vllm_series_are_selected_by_model_name_never_model():
    text = yaml.safe_dump(rules.rule_groups())
    assert "{model=" not in text and "model=" not in text.replace("model_name", "")


def test_ttft_buckets_are_the_simulators_and_vllms():
    from kiban_serving.sim.metrics import TTFT_BUCKETS

    assert rules.VLLM_TTFT_BUCKETS == tuple(TTFT_BUCKETS)
