"""Trace-replay load generator for OpenAI-compatible endpoints, with a latency/SLO report."""
