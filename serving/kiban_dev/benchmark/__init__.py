"""Autoscaling benchmark: Kiban's policy against its peers' and an oracle, on real LLM traces.

Everything here runs in simulated time: a fleet of replicas, each driven by the simulator's
engine model, replays a trace while one autoscaling policy resizes it.
"""
