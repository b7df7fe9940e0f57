"""Benchmarks: scripts run by make targets, not tests."""
