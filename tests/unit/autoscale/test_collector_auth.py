"""PrometheusHttp sends a bearer token from a file (OpenShift's thanos-querier needs one).

A recording HTTP server on loopback captures the request; it answers an empty vector so the
client's parsing path runs too. It checks our client's request, not Prometheus' behaviour.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kiban.autoscale.collector import PrometheusHttp, PrometheusUnavailable, auth_headers
from kiban.autoscale.model_pass import AutoscaleSettings
from kiban.config import load_config


@pytest.fixture
def recorder():
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(dict(self.headers))
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_token_file_is_sent_as_bearer_and_reread_each_query(tmp_path, recorder):
    url, seen = recorder
    token = tmp_path / "token"
    token.write_text("first-token\n")
    prometheus = PrometheusHttp(url, bearer_token_file=str(token))
    assert prometheus.query("up", 0.0) == []
    token.write_text("rotated-token")
    prometheus.query("up", 0.0)
    assert [h.get("Authorization") for h in seen] == ["Bearer first-token", "Bearer rotated-token"]


def test_no_token_file_sends_no_authorization(recorder):
    url, seen = recorder
    PrometheusHttp(url).query("up", 0.0)
    assert "Authorization" not in seen[0]
    assert auth_headers(None) == {}


def test_unreadable_token_file_is_metrics_unavailable_not_a_crash(tmp_path, recorder):
    url, _ = recorder
    prometheus = PrometheusHttp(url, bearer_token_file=str(tmp_path / "missing"))
    with pytest.raises(PrometheusUnavailable, match="token file"):
        prometheus.query("up", 0.0)


def test_settings_carry_token_and_ca_from_the_environment():
    config = load_config({"KIBAN_PROMETHEUS_BEARER_TOKEN_FILE": "/var/run/secrets/token",
                          "KIBAN_PROMETHEUS_CA_FILE": "/var/run/secrets/service-ca.crt"})
    settings = AutoscaleSettings.from_config(config, environ={})
    assert settings.prometheus_bearer_token_file == "/var/run/secrets/token"
    assert settings.prometheus_ca_file == "/var/run/secrets/service-ca.crt"


def test_messages_never_carry_url_credentials():
    """A user:password in KIBAN_PROMETHEUS_URL must not reach status or Events."""
    from kiban.autoscale.collector import redact_url

    assert redact_url("https://kiban:s3cret@prom.example:9091/api") == "https://prom.example:9091/api"
    assert redact_url("http://prometheus.monitoring.svc:9090") == "http://prometheus.monitoring.svc:9090"
    with pytest.raises(PrometheusUnavailable) as caught:
        PrometheusHttp("http://kiban:s3cret@127.0.0.1:9/").query("up", 0.0)
    assert "s3cret" not in str(caught.value)
