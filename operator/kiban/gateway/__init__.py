"""The Kiban gateway (`kiban gateway`): routing by load and prefix, API keys on every path,
requests held while a model wakes from zero. See server.py."""
