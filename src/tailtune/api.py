"""A scikit-learn style estimator over the lower-level pieces."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .data import DataError, TextDataset, check_labels, check_trainable, class_stats, label_space, stratified_split
from .metrics import long_tail_report, weight_norms
from .model import Classifier, build_classifier, config_from_preset
from .train import TrainConfig, cached_features, predict_logits, resolve_device, set_seed, train


def _as_dataset(X, y=None, X_b=None) -> TextDataset:
    if isinstance(X, TextDataset):
        return X
    if isinstance(X, str):
        raise TypeError("X must be a list of texts, not a single string")
    X = list(X)
    return TextDataset(X, list(y) if y is not None else [""] * len(X),
                       list(X_b) if X_b is not None else None)


class TailtuneClassifier:
    """Tune a BERT-family encoder into a classifier with one of the named presets.

    >>> clf = TailtuneClassifier("prompt", template="{text} This is {mask} news .")
    >>> clf.fit(texts, labels).predict(["new text"])

    Axis options left at ``None`` keep the preset's value (see ``tailtune.PRESETS``); any other
    ``ClassifierConfig`` field (``adapter_size``, ``lora_r``, ``prefix_length``, ...) is a keyword too.
    Learned attributes: ``model_``, ``labels_``, ``class_stats_``, ``train_result_``.
    """

    def __init__(self, preset: str = "cls", backbone: str | None = None, *,
                 template: str | None = None, verbalizer: dict | None = None,
                 input_format: str | None = None, head: str | None = None,
                 activation: str | None = None, dropout: float | None = None,
                 layer_norm: str | None = None, decouple_embeddings: bool | None = None,
                 trains: str | None = None, loss: str | None = None,
                 focal_gamma: float | None = None, eta: float | None = None,
                 max_length: int | None = None, train_config: TrainConfig | None = None,
                 theta: float = 0.65, dev_fraction: float = 0.1,
                 trust_remote_code: bool = False, **options):
        self.preset = preset
        self.backbone = backbone
        self.verbalizer = verbalizer
        self.config = config_from_preset(
            preset, template=template, input_format=input_format, head=head, activation=activation,
            dropout=dropout, layer_norm=layer_norm, decouple_embeddings=decouple_embeddings,
            trains=trains, loss=loss, focal_gamma=focal_gamma, eta=eta, max_length=max_length, **options)
        self.train_config = train_config or TrainConfig()
        self.theta = theta
        self.dev_fraction = dev_fraction
        self.trust_remote_code = trust_remote_code

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, X_b=None, dev: TextDataset | None = None) -> "TailtuneClassifier":
        """Train on texts ``X`` (or a TextDataset) and labels ``y``; dev is carved if not given."""
        train_ds = _as_dataset(X, y, X_b)
        if y is None and not isinstance(X, TextDataset):
            raise ValueError("fit needs labels: fit(texts, labels) or fit(TextDataset)")
        check_trainable(train_ds)
        if dev is None:
            train_ds, dev = stratified_split(train_ds, self.dev_fraction, self.train_config.seed)
        self.labels_ = label_space(train_ds.labels)
        if len(self.labels_) < 2:
            raise DataError(f"{train_ds.source}: training data has a single class ({self.labels_[0]!r})")
        check_labels(dev, self.labels_, "dev")
        self.class_stats_ = class_stats(train_ds.labels, self.theta)
        set_seed(self.train_config.seed)
        self.model_ = build_classifier(self.config, self.labels_, self.backbone, self.verbalizer,
                                       self.trust_remote_code)
        self.model_.to(resolve_device(self.train_config.device))
        index = {c: i for i, c in enumerate(self.labels_)}
        t0 = time.perf_counter()
        train_enc = self.model_.encode(train_ds.texts, train_ds.texts_b)
        dev_enc = self.model_.encode(dev.texts, dev.texts_b) if len(dev) else None
        self.encode_seconds_ = time.perf_counter() - t0

        dev_features: list = []  # filled at the first evaluation, inside the timed loop

        def evaluate():
            if not dev_features:  # a frozen backbone's dev features never change: encode them once
                dev_features.append(cached_features(self.model_, dev_enc, self.train_config))
            pred = self._predict_encoded(dev_enc, dev_features[0]).argmax(-1).tolist()
            return long_tail_report(dev.labels, [self.labels_[i] for i in pred], self.theta)

        self.train_result_ = train(self.model_, train_enc, [index[c] for c in train_ds.labels],
                                   self.train_config, evaluate if dev_enc else None)
        self.train_labels_ = list(train_ds.labels)
        return self

    # ------------------------------------------------------------------ predict
    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise RuntimeError("this classifier is not trained yet: call fit() or load()")

    def _predict_encoded(self, encoded, features=None) -> torch.Tensor:
        return predict_logits(self.model_, encoded, self.train_config.eval_batch_size,
                              self.train_config.bf16, features=features)

    def decision_function(self, X, X_b=None) -> np.ndarray:
        """Calibrated class scores, shape (n, classes), columns in ``labels_`` order."""
        self._check_fitted()
        ds = _as_dataset(X, None, X_b)
        return self._predict_encoded(self.model_.encode(ds.texts, ds.texts_b)).numpy()

    def predict_proba(self, X, X_b=None) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.decision_function(X, X_b)), -1).numpy()

    def predict(self, X, X_b=None) -> list[str]:
        return [self.labels_[i] for i in self.decision_function(X, X_b).argmax(-1)]

    def evaluate(self, ds: TextDataset, theta: float | None = None) -> dict:
        """Long-tail report (accuracy, macro/head/tail F1, per class) on a labelled dataset."""
        self._check_fitted()
        check_labels(ds, self.labels_, "evaluation")
        return long_tail_report(ds.labels, self.predict(ds), self.theta if theta is None else theta)

    def weight_norms(self) -> list[dict]:
        self._check_fitted()
        counts_from = getattr(self, "train_labels_", None) or [
            y for y, n in self.class_stats_["counts"].items() for _ in range(n)]
        return weight_norms(self.labels_, self.model_.class_weight_norms(), counts_from)

    @property
    def n_trainable_(self) -> int:
        self._check_fitted()
        return sum(p.numel() for p in self.model_.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        self._check_fitted()
        extra = {"preset": self.preset, "theta": self.theta, "train_config": self.train_config.to_dict(),
                 "class_stats": self.class_stats_}
        return self.model_.save(directory, extra)

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto",
             backbone: str | None = None) -> "TailtuneClassifier":
        """Load a saved classifier (a task module goes onto ``backbone``, default: its own)."""
        model = Classifier.load(directory, resolve_device(device), backbone)
        meta = model.saved_metadata
        clf = cls.__new__(cls)
        clf.preset, clf.backbone, clf.config = meta.get("preset"), meta["backbone"]["name"], model.config
        clf.verbalizer = meta.get("verbalizer")
        clf.train_config = TrainConfig(**{**meta.get("train_config", {}), "device": device, "progress": False})
        clf.theta, clf.dev_fraction, clf.trust_remote_code = meta.get("theta", 0.65), 0.1, False
        clf.model_, clf.labels_ = model, model.labels
        clf.class_stats_ = meta.get("class_stats") or {}
        return clf
