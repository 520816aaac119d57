"""Inference with ONNX Runtime on an exported classifier (``tailtune export``), without PyTorch.

    from tailtune.deploy import OnnxClassifier
    clf = OnnxClassifier("exported/")
    clf.predict(["a text"]); clf.predict_proba(["a text"])

Needs ``onnxruntime``, ``numpy`` and ``transformers`` (for the tokenizer; it runs without PyTorch).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtefactError, ConfigError
from .text import Encoded, Template, encode_plain


class OnnxClassifier:
    def __init__(self, directory: str | Path, providers: list[str] | None = None, threads: int | None = None) -> None:
        import importlib.util
        if importlib.util.find_spec("onnxruntime") is None:
            raise ConfigError("tailtune.deploy runs on ONNX Runtime: pip install onnxruntime (or 'tailtune[onnx]')")
        import onnxruntime as ort
        from transformers import AutoTokenizer
        directory = Path(directory)
        if not (directory / "export.json").is_file():
            raise ArtefactError(f"{directory} is not an exported classifier (no export.json); make one with "
                                f"`tailtune export`")
        self.info = json.loads((directory / "export.json").read_text())
        self.labels: list[str] = self.info["labels"]
        self.tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        self.template = Template(self.info["template"]) if self.info.get("template") else None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(directory / "model.onnx"), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def _encode(self, texts: list[str], texts_b: list[str] | None) -> list[Encoded]:
        if self.template is not None:
            return self.template.encode(self.tokenizer, texts, texts_b, self.info["max_length"])
        return encode_plain(self.tokenizer, texts, texts_b, self.info["max_length"])

    def _feeds(self, encoded: list[Encoded]) -> dict[str, np.ndarray]:
        width = max(len(e.input_ids) for e in encoded)
        pad = self.tokenizer.pad_token_id
        ids = np.full((len(encoded), width), pad, dtype=np.int64)
        mask = np.zeros((len(encoded), width), dtype=np.int64)
        types = np.zeros((len(encoded), width), dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, :len(e.input_ids)] = e.input_ids
            mask[i, :len(e.input_ids)] = 1
            if e.token_type_ids:
                types[i, :len(e.token_type_ids)] = e.token_type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                 "position": np.array([e.position for e in encoded], dtype=np.int64)}
        if "soft_positions" in self.inputs:
            feeds["soft_positions"] = np.array([e.soft_positions for e in encoded], dtype=np.int64)
        return {k: v for k, v in feeds.items() if k in self.inputs}

    def decision_function(self, texts: list[str], texts_b: list[str] | None = None, batch_size: int = 64) -> np.ndarray:
        """Calibrated class scores (n, classes), columns in ``labels`` order."""
        encoded = self._encode(list(texts), list(texts_b) if texts_b is not None else None)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
        out = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            out[idx] = self.session.run(["scores"], self._feeds([encoded[i] for i in idx]))[0]
        return out

    def predict_proba(self, texts: list[str], texts_b: list[str] | None = None) -> np.ndarray:
        scores = self.decision_function(texts, texts_b)
        e = np.exp(scores - scores.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def predict(self, texts: list[str], texts_b: list[str] | None = None) -> list[str]:
        return [self.labels[i] for i in self.decision_function(texts, texts_b).argmax(-1)]

    def __repr__(self) -> str:
        return f"OnnxClassifier({len(self.labels)} labels, inputs {self.inputs})"


def info(directory: str | Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "export.json").read_text())
