"""Kiban serving: what runs beside or instead of the engine (simulator, load generator, benchmark)."""
