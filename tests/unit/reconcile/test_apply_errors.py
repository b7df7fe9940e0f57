"""Writer.execute_one: failures are recorded per child, never raised out of the pass."""

from __future__ import annotations

from kubernetes.dynamic.exceptions import ResourceNotFoundError
from urllib3.exceptions import MaxRetryError

from kiban.reconcile.apply import Writer
from kiban.reconcile.plan import Action

CHILD = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m"}}


class _Failing(Writer):
    def __init__(self, exc: Exception) -> None:
        super().__init__(api=None)  # type: ignore[arg-type]
        self.exc = exc

    def _resource(self, api_version: str, kind: str):
        raise self.exc


def test_unserved_kind_and_connection_errors_are_recorded_not_raised():
    for exc in (ResourceNotFoundError("No matches found for ServiceMonitor"),
                MaxRetryError(None, "/apis", "connection refused")):
        for verb in ("create", "update", "delete"):
            result = _Failing(exc).execute_one(Action(verb, CHILD, "test"), "ns")
            assert not result.written
            assert len(result.errors) == 1 and result.errors[0].startswith(f"{verb} ServiceMonitor/m failed:")
