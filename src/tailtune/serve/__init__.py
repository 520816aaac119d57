"""Serving many classifiers over HTTP (``tailtune serve``); needs the ``serve`` extra (FastAPI, uvicorn)."""
