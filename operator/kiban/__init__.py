"""Kiban (基盤): a Kubernetes operator that serves foundation models on vLLM, sized to latency SLOs."""

__version__ = "0.1.0"
