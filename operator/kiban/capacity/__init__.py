"""Pure queueing maths for sizing vLLM fleets: no I/O, no clocks, no Kubernetes."""
