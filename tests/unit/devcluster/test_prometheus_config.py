"""Pure parts of the Prometheus helper: config and file_sd documents."""

from pathlib import Path

import pytest

from kiban_dev.devcluster.prometheus import build_config, file_sd_scrape_config, file_sd_targets


def test_build_config_uses_the_scrape_interval_for_timeout_and_evaluation():
    job = file_sd_scrape_config("sim", Path("/sd"))
    config = build_config([job], scrape_interval="1s")
    assert config["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert config["scrape_configs"][0]["file_sd_configs"] == [{"files": ["/sd/*.json"], "refresh_interval": "1s"}]
    assert "rule_files" not in config


def test_long_intervals_cap_the_scrape_timeout():
    config = build_config([], scrape_interval="1m", rule_files=[Path("/r.yml")])
    assert config["global"]["scrape_timeout"] == "10s"
    assert config["rule_files"] == ["/r.yml"]


def test_bad_interval_is_named():
    with pytest.raises(ValueError, match="scrape_interval"):
        build_config([], scrape_interval="fast")


def test_file_sd_targets_document():
    assert file_sd_targets(["127.0.0.1:8000"], {"model": "m"}) == [
        {"targets": ["127.0.0.1:8000"], "labels": {"model": "m"}}]
    with pytest.raises(ValueError, match="host:port"):
        file_sd_targets(["127.0.0.1"])
