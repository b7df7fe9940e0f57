"""The local end-to-end demo (`make demo`, `python -m kiban_dev.demo`).

A real control plane with kwok GPU nodes, the operator as a process, a real Prometheus, and one
kiban-sim simulator process per Running engine pod (backer.py), and the real Kiban gateway
process in front of them. runner.py wires them; plot.py draws the result.
See docs/demo.md.
"""
