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
from .text import Encoded, Template, encode_plain, sorted_batches


EXIT_RULES = ("entropy", "normalized-entropy", "confidence", "patience")  # tailtune.heads.early_exit's (no torch here)


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
        self.directory, self._options = directory, options
        self._providers = providers or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(directory / "model.onnx"), options, providers=self._providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self._exit_sessions: list[Any] = []
        self._declared: dict[Any, frozenset] = {}  # session -> the input names its graph declares
        self.early_exit_: tuple[str, float, int] | None = None  # set_early_exit: (rule, threshold, patience)
        self.layers_used_: np.ndarray | None = None

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
        return feeds  # (each graph takes the ones it declares: _only)

    def set_early_exit(self, rule: str | None = None, threshold: float | None = None,
                       patience: int | None = None) -> "OnnxClassifier":
        """Predict layer by layer: a row leaves at the first layer whose exit rule fires, as ``tailtune predict
        --early-exit`` does (the exported rule and threshold unless given); ``layers_used_`` keeps each row's
        depth. Needs a classifier trained with exits (head ``early-exit``), exported by this version."""
        spec = self.info.get("early_exit")
        if not spec:
            raise ConfigError(f"{self.directory} has no exit classifiers: export a classifier trained with "
                              f"head='early-exit' (e.g. --preset pabee) with this version of tailtune")
        rule = rule or spec["rule"]
        if rule not in EXIT_RULES:
            raise ConfigError(f"early exit: rule={rule!r} is not one of {', '.join(EXIT_RULES)}")
        if not self._exit_sessions:
            import onnxruntime as ort
            self._exit_sessions = [ort.InferenceSession(str(self.directory / "exits" / f"{name}.onnx"), self._options,
                                                        providers=self._providers)
                                   for name in ["embeddings", *(f"layer{k}" for k in range(1, spec["layers"] + 1))]]
        self.early_exit_ = (rule, spec["threshold"] if threshold is None else float(threshold),
                            spec["patience"] if patience is None else int(patience))
        return self

    def decision_function(self, texts: list[str], texts_b: list[str] | None = None, batch_size: int = 64) -> np.ndarray:
        """Calibrated class scores (n, classes), columns in ``labels`` order."""
        encoded = self._encode(list(texts), list(texts_b) if texts_b is not None else None)
        out = np.zeros((len(encoded), len(self.labels)), dtype=np.float32)
        used = np.zeros(len(encoded), dtype=np.int64)
        for idx in sorted_batches(encoded, batch_size):
            feeds = self._feeds([encoded[i] for i in idx])
            if self.early_exit_ is None:
                out[idx] = self.session.run(["scores"], self._only(self.session, feeds))[0]
            else:
                out[idx], used[idx] = self._exit_pass(feeds)
        self.layers_used_ = used if self.early_exit_ is not None else None
        return out

    def _only(self, session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds a graph declares (an input the trace found unused, e.g. the read position of mean pooling, is
        not one); each session's names are read once."""
        names = self._declared.get(session)
        if names is None:
            names = self._declared[session] = frozenset(i.name for i in session.get_inputs())
        return {k: v for k, v in feeds.items() if k in names}

    def _exit_pass(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One batch layer by layer; rows leave at their first exit whose rule fires (``tailtune.early_exit``)."""
        rule, threshold, patience = self.early_exit_
        embeddings, *layers = self._exit_sessions
        hidden = embeddings.run(["hidden"], self._only(embeddings, feeds))[0]
        rows = {"attention_mask": feeds["attention_mask"], "position": feeds["position"]}
        n = len(hidden)
        active, out, used = np.arange(n), np.zeros((n, len(self.labels)), np.float32), np.zeros(n, np.int64)
        streak, previous = np.zeros(n, np.int64), np.full(n, -1)
        for k, layer in enumerate(layers, 1):
            hidden, scores = layer.run(["hidden_out", "scores"], self._only(layer, {"hidden": hidden, **rows}))
            e = np.exp(scores - scores.max(-1, keepdims=True))
            probs = e / e.sum(-1, keepdims=True)
            answer = probs.argmax(-1)
            streak, previous = np.where(answer == previous, streak + 1, 1), answer
            if rule in ("entropy", "normalized-entropy"):
                entropy = -(probs * np.log(np.maximum(probs, 1e-12))).sum(-1)
                leave = entropy < threshold * (np.log(probs.shape[-1]) if rule == "normalized-entropy" else 1.0)
            elif rule == "confidence":
                leave = probs.max(-1) >= threshold if threshold > 0 else np.zeros(len(answer), bool)
            else:  # patience
                leave = streak >= patience if patience > 0 else np.zeros(len(answer), bool)
            leave |= k == len(layers)
            out[active[leave]], used[active[leave]] = scores[leave], k
            keep = ~leave
            active, hidden, streak, previous = active[keep], hidden[keep], streak[keep], previous[keep]
            rows = {name: v[keep] for name, v in rows.items()}
            if not len(active):
                break
        return out, used

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
