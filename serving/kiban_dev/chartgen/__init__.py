"""Observability as code: Grafana dashboards, Prometheus alerting rules, and a PNG renderer.

The chart (charts/kiban) carries what these modules generate; `hack/chart/sync.py` writes it
there and fails in check mode when the checked-in copy is stale.
"""
