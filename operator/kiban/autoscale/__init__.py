"""Autoscaling: a pure policy (policy.py) driven by the operator's timer and by the benchmark."""
