"""Classifier = one entry of each axis, side by side (composition, not subclasses).

``Classifier`` looks each axis's entry up in its registry and builds it; it never branches on an
entry's name. Parameters keep stable names: ``encoder.*`` (the shared backbone, never renamed),
``head.*`` and ``tuning.*`` (task modules: adapters, prefixes, soft prompts).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .backbone import (FINGERPRINT_VERSION, Backbone, check_max_length, check_prediction_length, drop_pooler,
                       fingerprint, load_backbone)
from .artefacts import FORMAT_VERSION
from .config import ClassifierConfig
from .device import autocast
from .version import __version__
from .errors import ConfigError
from .batch import collate
from .inputs import Encoded, Verbalizer
from .registry import BuildContext
from .tuning.routing import Route, TaskRouter

ROLES = ("backbone", "head", "module")  # learning rates: lr, head_lr, module_lr


class Classifier(nn.Module):
    """An encoder, an input format, a readout, a head, a training mechanism, an objective and a
    calibration, each built by its registry entry."""

    def __init__(self, config: ClassifierConfig, labels: list[str], backbone: Backbone,
                 verbalizer: Verbalizer | None = None, backbone_fingerprint: str | None = None,
                 task: str = "default", class_counts: Mapping[str, int] | None = None,
                 loading: bool = False) -> None:
        super().__init__()
        if not re.fullmatch(r"[A-Za-z0-9_-]+", task):
            raise ConfigError(f"task name {task!r}: use letters, digits, '_' and '-' only")
        labels = [str(y) for y in labels]
        config = config.resolved(backbone)  # entries chosen at build time ("auto") become concrete
        if len(set(labels)) != len(labels) or len(labels) < 2:
            raise ConfigError(f"a classifier needs two or more distinct labels, got {labels[:10]}")
        self.config, self.task, self.labels = config, task, labels
        self.tokenizer = backbone.tokenizer
        self.backbone_name = backbone.name
        self.encoder = drop_pooler(backbone.encoder)
        self.fingerprint = backbone_fingerprint or fingerprint(self.encoder)
        self.router = TaskRouter.of(self.encoder)
        if task in self.router.tasks:
            raise ConfigError(f"a task named {task!r} is already attached to this backbone; pick another name")
        self.verbalizer = (verbalizer or Verbalizer(labels)) if config.uses_label_words else None
        ctx = BuildContext(config, labels, self.encoder, self.tokenizer, self.router, task, backbone.mlm,
                           self.verbalizer, backbone.name, class_counts, loading)
        build = lambda axis: config.entry(axis).build(config.of(axis), ctx)  # noqa: E731
        self.input_format = build("input_format")
        self.readout = build("readout")
        self.head = build("head")
        mechanism = build("trains")
        self.tuning = nn.Module()  # small task modules; backbone parameter names stay untouched
        for name, module in mechanism.modules.items():
            setattr(self.tuning, name, module)
        self._backbone_role = mechanism.backbone_role
        for name, param in self.input_format.attach(ctx, self.head).items():  # soft prompt tokens
            setattr(self.tuning, name, param)
        self.objective = build("objective")
        self.calibration = build("calibration")
        self.router.tasks.add(task)
        self.set_trainable()

    # -- what trains ---------------------------------------------------------------
    def role(self, name: str) -> str | None:
        """How parameter ``name`` trains: "head", "module" (task modules), "backbone", or None (frozen)."""
        if name.startswith("head."):
            return "head"
        if name.startswith("tuning."):
            return "module"
        owner = self.router.owner_of(name)  # parameters of task modules living inside the encoder (LoRA)
        if owner is not None:
            return "module" if owner == self.task else None
        return self._backbone_role(name)

    def set_trainable(self, roles: tuple[str, ...] | None = None, only: Callable[[str], bool] | None = None) -> None:
        """The head and the task's modules always train; the backbone as the mechanism says. ``roles``
        limits training to parameters of those roles (e.g. ``("head",)`` for classifier re-training),
        ``only`` to the parameter names it accepts."""
        for name, p in self.named_parameters():
            role = self.role(name)
            p.requires_grad_(role is not None and (roles is None or role in roles) and (only is None or only(name)))

    def param_roles(self) -> dict[str, str]:
        """Every trainable parameter's role, in parameter order."""
        return {n: self.role(n) for n, p in self.named_parameters() if p.requires_grad}

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def parameter_counts(self) -> dict:
        """Trainable parameters, absolute and as % of the backbone, with and without the head."""
        # the base backbone: task modules living inside the encoder (LoRA) are not part of it
        backbone = sum(p.numel() for n, p in self.encoder.named_parameters() if self.router.owner_of(n) is None)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        head = sum(p.numel() for n, p in self.named_parameters() if p.requires_grad and n.startswith("head."))
        return {"backbone": backbone, "trainable": trainable, "trainable_head": head,
                "trainable_without_head": trainable - head,
                "pct_of_backbone": 100 * trainable / backbone,
                "pct_of_backbone_without_head": 100 * (trainable - head) / backbone}

    @property
    def frozen_features(self) -> bool:
        """True when nothing before the head trains: the encoder's output for a text never
        changes, so training may compute it once and reuse it (``TrainConfig.cache_features``)."""
        return all(n.startswith("head.") for n in self.trainable_parameter_names()) \
            and not self.input_format.resamples

    @property
    def shares_backbone(self) -> bool:
        return bool(self.config.entry("trains").trait("shares_backbone"))

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen_features:  # fixed features: no dropout inside the frozen backbone
            self.encoder.eval()
        return self

    # -- inputs ----------------------------------------------------------------------
    def encode(self, texts: list[str], texts_b: list[str] | None = None, epoch: int | None = None,
               pool_index: list[int | None] | None = None) -> list[Encoded]:
        """Model inputs for texts; ``epoch`` and ``pool_index`` matter to formats that draw on a pool."""
        return self.input_format.encode(texts, texts_b, epoch, pool_index)

    def set_max_length(self, max_length: int | None) -> None:
        """Read up to ``max_length`` tokens of each text from now on (``None``: the length it was trained at).
        Checked against the backbone's positions; not saved (README: "Reading more of each text at prediction")."""
        n = self.config.max_length if max_length is None else max_length
        check_prediction_length(n)
        check_max_length(n, self.encoder, self.tokenizer, self.backbone_name)
        self.input_format.max_length = n

    def encode_training(self, examples: Any, epoch: int) -> list[Encoded]:
        """The inputs of training examples in one epoch: the examples are the pool's own rows."""
        return self.encode(examples.texts, examples.texts_b, epoch, list(range(len(examples))))

    # -- forward ---------------------------------------------------------------------
    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None, soft_positions: torch.Tensor | None = None,
                 scoring: bool = False) -> torch.Tensor:
        """The encoder's token features ``(batch, seq, hidden)`` through this task's modules;
        ``(batch, seq, layers + 1, hidden)`` when the head reads every layer. ``scoring``: only what the head's
        scores read: the last layer alone, as ``(batch, seq, 1, hidden)``, for a head that reads every layer in
        training but scores from the last (early exit at full depth: no copy of every layer's states)."""
        every = self.scores_every_layer if scoring else self.head.layers == "all"
        hidden = self.router.encode([Route(self.task, None, soft_positions)], input_ids, attention_mask,
                                    token_type_ids, all_layers=every)
        return self.scoring_view(hidden, every) if scoring else hidden

    @property
    def scores_every_layer(self) -> bool:
        """Do the head's scores read every layer's states? (An early-exit head reads them in training only: at full
        depth it scores from the last layer.)"""
        return self.head.layers == "all" and not getattr(self.head, "scores_from_last_layer", False)

    def scoring_view(self, hidden: torch.Tensor, every: bool) -> torch.Tensor:
        """What ``scores`` reads, from an encoder pass that gave every layer's states (``every``: (batch, seq,
        layers + 1, hidden), e.g. a mixed-task batch where another task needs them) or the last layer's."""
        if self.head.layers != "all":
            return hidden[:, :, -1] if every else hidden
        if self.scores_every_layer:
            return hidden
        return hidden[:, :, -1:] if every else hidden.unsqueeze(2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, soft_positions: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores ``(batch, classes)``; ``features`` (cached token features) skips the encoder."""
        hidden = self.features(input_ids, attention_mask, token_type_ids, soft_positions, scoring=True) \
            if features is None else features
        return self.scores(hidden, attention_mask, position)

    def scores(self, hidden: torch.Tensor, attention_mask: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """The readout and the head on token features: ``(batch, seq, hidden)`` -> ``(batch, classes)``."""
        x, mask = self.readout(hidden, attention_mask, position)
        return self.head(x, mask)

    def training_loss(self, batch: dict, target: torch.Tensor, bf16: bool = False,
                      progress: float | None = None) -> torch.Tensor:
        """The head's training loss on a collated batch (``features`` in it skips the encoder);
        ``progress`` (0 -> 1 over training) reaches objectives that change during training (DRW)."""
        if progress is not None and hasattr(self.objective, "set_progress"):
            self.objective.set_progress(progress)
        logits, x, mask = self._training_scores(batch, target.device, bf16)
        return self.head.loss(logits, x, mask, target, self.objective)

    def distill_loss(self, batch: dict, soft: torch.Tensor, temperature: float = 2.0,
                     bf16: bool = False) -> torch.Tensor:
        """Knowledge distillation on soft labels ``soft`` (batch, classes; probabilities):
        ``T² · KL(soft ‖ softmax(scores / T))`` (Hinton et al., 2015; PET's final classifier)."""
        logits, _, _ = self._training_scores(batch, soft.device, bf16)
        if logits.dim() != 2:
            raise ConfigError(f"distillation needs one score per class; head={self.config.head!r} gives "
                              f"{tuple(logits.shape)}")
        log_p = torch.log_softmax(logits.float() / temperature, -1)
        return torch.nn.functional.kl_div(log_p, soft, reduction="batchmean") * temperature ** 2

    def _training_scores(self, batch: dict, device: torch.device, bf16: bool) -> tuple:
        batch = dict(batch)
        features = batch.pop("features", None)
        with autocast(device, bf16):
            hidden = self.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                   batch.get("soft_positions")) if features is None else features
            x, mask = self.readout(hidden, batch["attention_mask"], batch["position"])
            return self.head(x, mask), x, mask

    @torch.no_grad()
    def read_vectors(self, encoded: list[Encoded], batch_size: int = 64, bf16: bool = False) -> torch.Tensor:
        """(n, dim) what the readout gives the head for each example, in input order, encoder in eval mode."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        rows = []
        for s in range(0, len(encoded), batch_size):
            batch = collate(encoded[s:s + batch_size], self.tokenizer.pad_token_id, device)
            with autocast(device, bf16):
                hidden = self.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                       batch.get("soft_positions"))
                rows.append(self.readout(hidden, batch["attention_mask"], batch["position"])[0].float())
        self.train(was_training)
        return torch.cat(rows)

    @torch.no_grad()
    def head_scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """(n, classes) the head's raw scores of read vectors (``read_vectors``), in eval mode: what ``forward`` gives
        for the same examples, without the encoder (for a head that reads one vector per example)."""
        was_training = self.head.training
        self.head.eval()
        scores = self.head(vectors.to(next(self.parameters()).device)).float().cpu()
        self.head.train(was_training)
        return scores

    def class_prototypes(self, encoded: list[Encoded], targets: torch.Tensor, batch_size: int = 64,
                         bf16: bool = False) -> torch.Tensor:
        """(classes, dim): the mean of each class's L2-normalised read vectors, encoder in eval mode
        (zeros for a class without examples)."""
        x = torch.nn.functional.normalize(self.read_vectors(encoded, batch_size, bf16), dim=-1)
        sums = x.new_zeros(len(self.labels), *x.shape[1:]).index_add_(0, targets.to(x.device), x)
        counts = torch.bincount(targets, minlength=len(self.labels)).to(x.device).clamp_min(1)
        return sums / counts.reshape(-1, *([1] * (sums.dim() - 1)))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The objective on given scores."""
        return self.objective(logits, target)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Post-hoc calibration, applied at prediction time only (e.g. η-norm)."""
        return self.calibration(logits, self)

    def class_weight_norms(self) -> list[float]:
        return self.head.class_weights()[0].detach().float().norm(dim=-1).tolist()

    # -- what a save holds -------------------------------------------------------------
    @property
    def full_artefact(self) -> bool:
        """Full fine-tuning saves every weight; otherwise only what trained is saved (a task module)."""
        return bool(self.config.entry("trains").trait("full_artefact"))

    def metadata(self) -> dict:
        pool = self.input_format.pool_state()
        return {**({"input_pool": pool} if pool is not None else {}),
            "format_version": FORMAT_VERSION,
            "tailtune_version": __version__,
            "config": self.config.to_dict(),
            "labels": list(self.labels),
            "verbalizer": self.verbalizer.to_dict() if self.verbalizer else None,
            "backbone": {"name": self.backbone_name, "fingerprint": self.fingerprint,
                         "fingerprint_version": FINGERPRINT_VERSION,
                         "model_type": self.encoder.config.model_type},
            "artefact": "full" if self.full_artefact else "module",
        }

    def module_tensors(self) -> dict[str, torch.Tensor]:
        """What trained, under portable names (task-owned encoder parameters under task "default"), and what the head
        fitted after training (``Head.saved_buffers``, e.g. a memory of training texts)."""
        fitted = {f"head.{n}": getattr(self.head, n) for n in self.head.saved_buffers}
        return {**{self.router.rename(n, "default"): p.detach().cpu().contiguous()
                   for n, p in self.named_parameters() if p.requires_grad},
                **{n: t.detach().cpu().contiguous() for n, t in fitted.items()}}

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu",
             backbone: str | Backbone | None = None, task: str = "default") -> "Classifier":
        """Load a saved classifier. A task module goes onto ``backbone`` (default: the one it was
        trained on), which must be the same base model; pass a loaded ``Backbone`` to attach the
        module, as ``task``, to an encoder other task modules already use."""
        from . import artefacts
        from .hub import resolve_classifier
        directory = resolve_classifier(directory)
        meta = artefacts.read_classifier(directory)
        config = ClassifierConfig.from_dict(meta["config"])
        verbalizer = Verbalizer(meta["labels"], meta["verbalizer"], warn_missing=False) if meta.get("verbalizer") \
            else None
        bb = artefacts.backbone_for(directory, meta, backbone)
        counts = (meta.get("class_stats") or {}).get("counts")  # priors of a post-hoc calibration
        model = cls(config, meta["labels"], bb, verbalizer, meta["backbone"]["fingerprint"],
                    task=task if meta["artefact"] == "module" else "default", class_counts=counts, loading=True)
        artefacts.load_weights(model, directory, meta, device)
        if meta.get("input_pool") is not None:  # the demonstrations' pool: the training examples
            model.input_format.load_pool(meta["input_pool"])
        model.saved_metadata = meta
        return model.to(device).eval()


def build_classifier(config: ClassifierConfig, labels: list[str], backbone: str | Backbone | None = None,
                     verbalizer: Mapping[str, Any] | None = None, trust_remote_code: bool = False,
                     class_counts: Mapping[str, int] | None = None) -> Classifier:
    """Load the backbone (with its MLM head when an entry needs it; or take a loaded one) and assemble a
    classifier."""
    bb = backbone if isinstance(backbone, Backbone) else \
        load_backbone(backbone, with_mlm_head=config.needs_mlm_head, trust_remote_code=trust_remote_code)
    check_max_length(config.max_length, bb.encoder, bb.tokenizer, bb.name)
    labels = [str(y) for y in labels]
    if verbalizer is not None and not config.uses_label_words:
        raise ConfigError(f"a verbalizer gives label words, but head={config.head!r} uses none; use a head that "
                          f"does (verbalizer, label-decoder) or leave the verbalizer out")
    verb = Verbalizer(labels, verbalizer) if config.uses_label_words else None
    if verb is not None:
        verb.check(bb.tokenizer)
    return Classifier(config, labels, bb, verb, class_counts=class_counts)
