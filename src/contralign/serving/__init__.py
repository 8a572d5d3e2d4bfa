"""Serving: the HTTP API (FastAPI), dynamic batching and the search page (``contralign serve``)."""
