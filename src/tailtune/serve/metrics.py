"""Prometheus metrics of the server (requests, errors, latency, batch sizes), on its own registry."""
from __future__ import annotations

from typing import Any


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram
        self.registry = CollectorRegistry()
        self.requests = Counter("tailtune_requests", "prediction requests", ["task", "status"], registry=self.registry)
        self.texts = Counter("tailtune_texts", "texts classified", ["task"], registry=self.registry)
        self.errors = Counter("tailtune_errors", "requests answered with an error", ["kind"], registry=self.registry)
        self.latency = Histogram("tailtune_request_seconds", "time from request to answer", ["task"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.batch_texts = Histogram("tailtune_batch_texts", "texts per model batch",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_requests = Histogram("tailtune_batch_requests", "requests per model batch",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)

    def batch(self, texts: int, requests: int) -> None:
        self.batch_texts.observe(texts)
        self.batch_requests.observe(requests)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe(self, task: str, status: int, seconds: float, texts: int = 0) -> None:
        self.requests.labels(task, str(status)).inc()
        self.latency.labels(task).observe(seconds)
        if texts:
            self.texts.labels(task).inc(texts)

    def error(self, kind: str) -> Any:
        self.errors.labels(kind).inc()
