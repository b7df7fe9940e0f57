"""The local end-to-end demo (`make demo`, `python -m kiban_dev.demo`).

A real control plane with kwok GPU nodes, the operator as a process, a real Prometheus, and one
kiban-sim simulator process per Running engine pod (backer.py), with a small least-outstanding
router standing in for the Service (router.py). runner.py wires them; plot.py draws the result.
See docs/demo.md.
"""
