"""vLLM-compatible engine simulator: a batching engine model, vLLM metric names, an OpenAI-compatible server."""
