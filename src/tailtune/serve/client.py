"""A small client for ``tailtune serve`` (standard library only)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import warnings
from typing import Any

from ..errors import TailtuneError


class ServerError(TailtuneError):
    """The server answered with an error."""


class Client:
    """``Client("http://127.0.0.1:8000", token=None).predict("sentiment", ["a lovely film"])``."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 60.0) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = e.reason
            raise ServerError(f"{method} {path}: {e.code} {message}") from None

    def predict(self, task: str, texts: list[str], texts_b: list[str] | None = None) -> list[dict]:
        """One dict per text: label, score and the probabilities of every label."""
        payload = {"texts": list(texts), **({"texts_b": list(texts_b)} if texts_b is not None else {})}
        answer = self._call("POST", f"/v1/{task}/predict", payload)
        for said in answer.get("warnings", []):  # e.g. a task trained on text pairs sent single texts
            warnings.warn(said, stacklevel=2)
        return answer["predictions"]

    def tasks(self) -> list[dict]:
        return self._call("GET", "/v1/tasks")["tasks"]

    def add(self, task: str) -> dict:
        return self._call("PUT", f"/v1/tasks/{task}")

    def remove(self, task: str) -> dict:
        return self._call("DELETE", f"/v1/tasks/{task}")

    def health(self) -> dict:
        return self._call("GET", "/health")
