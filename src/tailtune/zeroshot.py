"""Zero-shot classification: no labelled example, no training (``tailtune zero-shot``).

Two methods, chosen by what the backbone has:

- ``prompt`` (a backbone with a masked-LM head): the template puts a [MASK] after the text and the
  MLM head scores each label's words there (the verbalizer head of the ``prompt`` preset, untrained).
  With contextual calibration (Zhao et al., 2021) the label probabilities of content-free inputs
  ("N/A" and "" in the template) are averaged into ``p_cf`` and every score becomes
  ``log p(y|x) - log p_cf(y)``: the label the template favours whatever the text stops winning by
  default, and a content-free input itself scores every label alike.
- ``embedding`` (any encoder, e.g. the default MiniLM, which has no MLM head): the texts and a
  description of each label are read the way the backbone declares (mean pooling on a sentence
  encoder); the score is their cosine. It is the ``auto`` preset's cosine head started from the
  descriptions instead of class prototypes, so a zero-shot model is a classifier like any other.

``auto`` takes ``prompt`` when the backbone's checkpoint has its MLM head and ``embedding`` otherwise.

Calibration is the same shift for either method (the embedding method's scores are scaled cosines, softmaxed
alike), but by default (``calibrate=None``) only the prompt method is calibrated: on the seven 16-shot sets
the embedding method on MiniLM lost 1.1 to 12.2 accuracy points with it, on every set
(``benchmarks/prompting/fewshot.py``, methods ``zero-shot-emb`` and ``zero-shot-emb-cal``). A sentence
encoder's "N/A" is no neutral point of its embedding space, as it is for an MLM's [MASK] (in these runs).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from .data import texts_of
from .errors import ConfigError

METHODS = ("auto", "prompt", "embedding")
CONTENT_FREE = ("N/A", "")


def describe(label: str, template: str = "{label}") -> str:
    """A label's description: the template with the label's words (underscores and dashes as spaces)."""
    try:
        return template.format(label=str(label).replace("_", " ").replace("-", " "))
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"description template {template!r}: write the label's place as {{label}}, e.g. "
                          f"'This message is about {{label}} .' ({type(err).__name__}: {err})") from None


def label_descriptions(labels: Sequence[str], given: Mapping[str, Any] | None = None,
                       template: str | None = None) -> dict[str, Any]:
    """label -> its description: the one given (a text or a list of texts), else ``template`` filled with the
    label's words; a label with neither is left out."""
    out = {}
    for y in labels:
        d = (given or {}).get(y) or (describe(y, template) if template else None)
        if d:
            out[y] = d
    return out


def read_descriptions(labels: Sequence[str], source: Any = None, template: str | None = None) -> dict | None:
    """The training descriptions of ``labels`` (``train --descriptions / --description-template``, a dataset's
    ``descriptions`` / ``description_template`` in an experiment YAML): ``source`` (a JSON file's path, or a
    mapping: label -> a text or a list of texts), and ``template`` for the labels it leaves out. None when neither
    is given. The labels are checked when the descriptions join the data (``data.with_descriptions``)."""
    if source is None and template is None:
        return None
    given, where = ({} if source is None else source), "descriptions"
    if isinstance(source, str) or hasattr(source, "__fspath__"):
        from .artefacts import read_json
        given, where = read_json(source, "descriptions file"), f"descriptions file {source}"
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where}: give a JSON object (or mapping), label -> description; got "
                          f"{type(given).__name__}")
    given = {str(y): d for y, d in given.items()}
    return {**given, **label_descriptions([y for y in labels if y not in given], None, template)}


class ZeroShotClassifier:
    """Scores texts against labels without training; ``method_`` says which method ran. ``calibrate``: contextual
    calibration on (True), off (False), or on for the prompt method only (None, the default)."""

    def __init__(self, labels: Sequence[str], backbone: str | None = None, method: str = "auto",
                 descriptions: Mapping[str, str] | None = None, description_template: str = "{label}",
                 template: str | None = None, verbalizer: Mapping[str, Any] | None = None,
                 calibrate: bool | None = None,
                 max_length: int = 128, batch_size: int = 64, device: str = "auto") -> None:
        from .backbone import load_backbone
        from .config import config_from_preset
        from .device import resolve_device
        from .model import build_classifier
        if method not in METHODS:
            raise ConfigError(f"method={method!r} is not one of {', '.join(METHODS)}")
        self.labels = [str(y) for y in labels]
        if len(set(self.labels)) < 2:
            raise ConfigError("zero-shot needs two or more distinct labels")
        unknown = sorted(set(descriptions or {}) - set(self.labels))
        if unknown:
            raise ConfigError(f"descriptions name labels that are not among the labels: {unknown}")
        self.batch_size = batch_size
        bb = load_backbone(backbone, with_mlm_head=method != "embedding")
        has_mlm = bb.mlm is not None and not bb.mlm.missing
        if method == "prompt" and not has_mlm:
            raise ConfigError(f"method='prompt' needs a masked-LM head, and {bb.name} has none ("
                              f"{', '.join(bb.mlm.missing) if bb.mlm else 'not loaded'} missing); use "
                              f"--method embedding, or a backbone with its MLM head (e.g. bert-base-uncased)")
        self.method_ = "prompt" if method == "prompt" or (method == "auto" and has_mlm) else "embedding"
        if self.method_ == "prompt":
            config = config_from_preset("prompt", max_length=max_length,
                                        **({"template": template} if template else {}))
            words = dict(verbalizer or {y: describe(y).split() for y in self.labels})
            self.model = build_classifier(config, self.labels, bb, words)
        else:
            if template or verbalizer:
                raise ConfigError("a template and label words are for method='prompt'; the embedding method "
                                  "compares texts with label descriptions (--descriptions, --description-template)")
            self.model = build_classifier(config_from_preset("auto", stages=[], max_length=max_length),
                                          self.labels, bb)
            self.descriptions = label_descriptions(self.labels, descriptions, description_template or "{label}")
        self.model.to(resolve_device(device)).eval()
        if self.method_ == "embedding":  # a label with several descriptions starts from their mean
            from .data import TextDataset, with_descriptions
            texts = with_descriptions(TextDataset([], []), self.descriptions, copies=1, known=self.labels)
            self.model.head.init_from_prototypes(self.model.class_prototypes(
                self.model.encode(texts.texts), torch.tensor([self.labels.index(y) for y in texts.labels]),
                batch_size))
        self.content_free_log_probs: torch.Tensor | None = None
        if calibrate or (calibrate is None and self.method_ == "prompt"):
            probs = self._raw(list(CONTENT_FREE)).softmax(-1).mean(0)
            self.content_free_log_probs = probs.clamp_min(1e-12).log()

    def _raw(self, texts: Sequence[str]) -> torch.Tensor:
        from .training import predict_logits
        return predict_logits(self.model, self.model.encode(texts_of(texts, "texts")), self.batch_size)

    def decision_function(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, labels) scores: calibrated log-probabilities (prompt) or scaled cosines (embedding)."""
        scores = self._raw(texts)
        if self.content_free_log_probs is not None:
            scores = scores.log_softmax(-1) - self.content_free_log_probs
        return scores

    def predict_proba(self, texts: Sequence[str]) -> torch.Tensor:
        return self.decision_function(texts).softmax(-1)

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.decision_function(texts).argmax(-1).tolist()]

    def evaluate(self, ds: Any, theta: float = 0.65) -> dict:
        """The long-tail report of ``evaluate`` (head/tail from the evaluated split's counts)."""
        from .data import check_labels
        from .metrics import long_tail_report
        check_labels(ds, self.labels, "evaluation")
        report = long_tail_report(ds.labels, self.predict(ds.texts), theta)
        report["method"] = self.method_
        report["calibrated"] = self.content_free_log_probs is not None
        return report
