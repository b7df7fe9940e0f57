"""Kiban serving: what runs beside or instead of the engine in development (the vLLM simulator,
the load generator). Part of the developer distribution `kiban-dev`; never in the operator image."""
