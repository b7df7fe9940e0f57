"""The writer's pure helpers: the API server's message for a refusal, the old finalizer's removal
patch, and the Event aggregation key/cache."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from kiban.reconcile.apply import EventAggregator, _Seen, api_error_message, legacy_cleanup_patch


def refusal(status: int, reason: str, body: object) -> ApiException:
    exc = ApiException(status=status, reason=reason)
    exc.body = body if isinstance(body, str) or body is None else json.dumps(body)
    return exc


def test_the_servers_message_follows_the_status_line():
    # the Status body the API server sends for an invalid Service (its own words)
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
            "message": 'Service "x" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and '
                       "65535, inclusive"}
    assert api_error_message(refusal(422, "Unprocessable Entity", body)) == (
        '422 Unprocessable Entity: Service "x" is invalid: spec.ports[0].port: Invalid value: 70000: must be '
        "between 1 and 65535, inclusive")
    assert api_error_message(refusal(503, "Service Unavailable", None)) == "503 Service Unavailable"
    assert api_error_message(refusal(500, "Internal Server Error", "etcdserver: request timed out")) == (
        "500 Internal Server Error: etcdserver: request timed out")
    assert len(api_error_message(refusal(422, "x", {"message": "m" * 5000}))) == 1000


def test_the_old_kopf_finalizer_and_annotations_are_removed_guarded_by_test_ops():
    body = {"metadata": {"finalizers": ["other/keep", "kiban.dev/finalizer"],
                         "annotations": {"kiban.dev/last-handled-configuration": "{}",
                                         "kiban.dev/autoscale": "{}", "team": "a"}}}
    assert legacy_cleanup_patch(body) == [
        {"op": "test", "path": "/metadata/finalizers/1", "value": "kiban.dev/finalizer"},
        {"op": "remove", "path": "/metadata/finalizers/1"},
        {"op": "remove", "path": "/metadata/annotations/kiban.dev~1autoscale"},
        {"op": "remove", "path": "/metadata/annotations/kiban.dev~1last-handled-configuration"},
    ]
    assert legacy_cleanup_patch({"metadata": {"finalizers": ["other/keep"], "annotations": {"team": "a"}}}) is None


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_repeat_within_the_window_is_the_same_event_and_the_cache_is_bounded():
    clock = Clock()
    events = EventAggregator(window_s=600, size=2, clock=clock)
    fm = {"metadata": {"namespace": "ns", "name": "m", "uid": "u1"}}
    key = events.key(fm, "Warning", "ScalingFailed", "refused")
    assert events.repeat_of(key) is None
    events.remember(key, _Seen("m.abc", "ns", 1, "T0", 0.0))
    clock.now = 599
    assert events.repeat_of(key).name == "m.abc"
    clock.now = 1300
    assert events.repeat_of(key) is None  # older than the window: a new Event
    other_uid = events.key({"metadata": {**fm["metadata"], "uid": "u2"}}, "Warning", "ScalingFailed", "refused")
    assert other_uid != key  # a re-created model is another object
    for i in range(3):
        events.remember(("k", i), _Seen(f"e{i}", "ns", 1, "T", 0.0))
    assert events.repeat_of(("k", 0)) is None and events.repeat_of(("k", 2)) is not None
