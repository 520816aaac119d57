"""Classifier = input format x head x what trains x objective; presets; save and load."""
from __future__ import annotations

import dataclasses
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .backbone import Backbone, drop_pooler, fingerprint, load_backbone
from .heads import POINTERS, LabelDecoderHead, MLPHead, VerbalizerHead
from .losses import classification_loss, eta_norm
from .prompts import Encoded, Template, Verbalizer, encode_plain
from .routing import Route, TaskRouter
from .tuning import Prefix, adapter_sites, add_lora, lora_task, make_adapters, rename_lora, trainable_flags

DEFAULT_TEMPLATE = "{text} It is about {mask} ."
FORMAT_VERSION = 1

_CHOICES = {
    "input_format": ("plain", "template"),
    "head": ("mlp", "verbalizer", "label-decoder"),
    "activation": ("tanh", "relu", "gelu"),
    "layer_norm": ("none", "fresh", "pretrained"),
    "trains": ("all", "head", "bitfit", "adapter", "lora", "prefix", "prompt"),
    "adapter_kind": ("houlsby", "pfeiffer"),
    "adapter_init": ("near-identity", "normal", "zero"),
    "soft_init": ("vocab", "random"),
    "loss": ("ce", "focal", "triplet"),
    "label_init": ("words", "vocab", "random"),
    "label_pointer": POINTERS,
}


@dataclass
class ClassifierConfig:
    """The four axes of a classifier. Field comments double as CLI help."""

    input_format: str = "plain"
    """plain ([CLS] text [SEP], head reads [CLS]) or template (head reads [MASK])"""
    template: str | None = None
    """prompt template with {text}, optional {text_b} and one {mask}"""
    head: str = "mlp"
    """mlp (MLP on the read vector), verbalizer (pretrained MLM head + label words) or label-decoder (Y-Tuning)"""
    activation: str = "tanh"
    """activation of the MLP head"""
    dropout: float = 0.1
    """dropout of the MLP head"""
    layer_norm: str = "none"
    """LayerNorm in the MLP head: none, fresh, or pretrained (from the MLM head)"""
    decouple_embeddings: bool = False
    """verbalizer head: train a copy of the output embeddings apart from the input ones"""
    trains: str = "all"
    """what trains besides the head: all, head (nothing else), bitfit (biases), adapter, lora, prefix, prompt (soft tokens)"""
    adapter_kind: str = "houlsby"
    """houlsby (after attention and FFN outputs) or pfeiffer (after the FFN output only)"""
    adapter_size: int = 64
    """adapter bottleneck width"""
    adapter_activation: str = "relu"
    """adapter activation"""
    adapter_init: str = "near-identity"
    """adapter initialisation: near-identity, normal or zero (up-projection zero)"""
    lora_r: int = 8
    """LoRA rank"""
    lora_alpha: float = 16.0
    """LoRA scaling α (the update is scaled by α/r)"""
    lora_dropout: float = 0.1
    """dropout on the LoRA input"""
    lora_targets: str | None = None
    """comma-separated module names LoRA adapts (default per architecture: query,value)"""
    prefix_length: int = 4
    """prefix tuning: key/value vectors prepended in every layer"""
    prefix_reparam: int = 0
    """prefix tuning: width of the reparameterisation MLP (0: train the prefixes directly)"""
    soft_tokens: int = 0
    """soft prompt tokens prepended to the template (more can sit inside it: {soft:N})"""
    soft_init: str = "vocab"
    """initialisation of soft tokens without given words: vocab (random word embeddings) or random"""
    prompt_init: str | None = None
    """directory of a pre-trained prompt (tailtune pretrain-prompt): the prepended soft tokens start from it"""
    label_vectors: int = 1
    """label decoder: embeddings per label"""
    label_init: str = "words"
    """label decoder: label embeddings start from the label words' token embeddings, random vocabulary words, or random"""
    decoder_layers: int = 2
    """label decoder: transformer decoder layers"""
    decoder_heads: int = 4
    """label decoder: attention heads"""
    decoder_width: int | None = None
    """label decoder: width (None: the backbone's hidden size; else text features and labels are projected)"""
    decoder_dropout: float = 0.0
    """label decoder: dropout inside the decoder layers"""
    label_pointer: str = "linear"
    """label decoder: how a label's output vector becomes its score: linear (learned pooling), task (dot
    product with the task vector) or max (max pooling)"""
    loss: str = "ce"
    """training objective: ce, focal or triplet (margin loss of Y-Tuning)"""
    focal_gamma: float = 1.0
    """γ of the focal loss"""
    margin: float = 1.0
    """margin of the triplet loss"""
    eta: float | None = None
    """η-norm at prediction: divide class scores by ||w_c||^η (None: off)"""
    max_length: int = 128
    """maximum tokens per example (texts are truncated, templates never)"""

    def __post_init__(self):
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        if self.head == "verbalizer" and self.input_format != "template":
            raise ValueError("head='verbalizer' reads the [MASK] vector: it needs input_format='template'")
        if self.head != "mlp" and self.layer_norm != "none":
            raise ValueError(f"layer_norm={self.layer_norm!r} applies to the MLP head only")
        if self.head != "verbalizer" and self.decouple_embeddings:
            raise ValueError("decouple_embeddings applies to the verbalizer head only")
        if self.input_format == "template" and self.template is None:
            self.template = DEFAULT_TEMPLATE
        if self.template is not None:
            Template(self.template)  # fail early on a bad template
        if self.soft_tokens < 0 or self.adapter_size < 1 or self.prefix_length < 1 or self.prefix_reparam < 0:
            raise ValueError(f"need soft_tokens >= 0, adapter_size >= 1, prefix_length >= 1, prefix_reparam >= 0; "
                             f"got {self.soft_tokens}, {self.adapter_size}, {self.prefix_length}, "
                             f"{self.prefix_reparam}")
        has_soft = self.input_format == "template" and "{soft" in self.full_template
        if self.prompt_init and not self.soft_tokens:
            raise ValueError("prompt_init needs soft_tokens > 0 (the pre-trained prompt's length)")
        if self.soft_tokens and self.input_format != "template":
            raise ValueError("soft_tokens need input_format='template' (they sit in the template)")
        if self.trains == "prompt" and not has_soft:
            raise ValueError("trains='prompt' trains soft prompt tokens: set soft_tokens > 0 or put "
                             "{soft:N} in the template")
        if self.eta is not None and self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if min(self.label_vectors, self.decoder_layers, self.decoder_heads) < 1 or self.margin <= 0:
            raise ValueError("label_vectors, decoder_layers and decoder_heads must be >= 1 and margin > 0")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} is too small")

    @property
    def full_template(self) -> str | None:
        """The template with the prepended soft tokens spelled out."""
        if self.template is None:
            return None
        return (f"{{soft:{self.soft_tokens}}} " if self.soft_tokens else "") + self.template

    @property
    def needs_mlm_head(self) -> bool:
        return self.head == "verbalizer" or self.layer_norm == "pretrained"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# name -> (axis overrides, one-line description). Every row of the long-tail paper's grid.
PRESETS: dict[str, tuple[dict, str]] = {
    "cls": ({}, "CLS-tuning: tanh MLP head on [CLS], all weights, cross-entropy"),
    "cls-relu": ({"activation": "relu"}, "CLS-tuning with a ReLU MLP head"),
    "cls-eta-norm": ({"eta": 1.1}, "CLS-tuning, class scores divided by ||w_c||^1.1 at prediction"),
    "cls-focal": ({"loss": "focal"}, "CLS-tuning with focal loss (γ=1)"),
    "cls-prompt": ({"input_format": "template"}, "CLS-tuning w/ prompt: template input, MLP head on [MASK]"),
    "cls-ln": ({"layer_norm": "fresh"}, "CLS-tuning w/ LN: LayerNorm before the output layer"),
    "cls-pt-ln": ({"layer_norm": "pretrained"}, "CLS-tuning w/ pt. LN: that LayerNorm from the MLM head"),
    "prompt": ({"input_format": "template", "head": "verbalizer"},
               "prompt-tuning: template, pretrained MLM head + verbalizer"),
    "prompt-ed": ({"input_format": "template", "head": "verbalizer", "decouple_embeddings": True},
                  "prompt-tuning w/ ed.: output embeddings decoupled from input embeddings"),
    "prompt-focal": ({"input_format": "template", "head": "verbalizer", "loss": "focal"},
                     "prompt-tuning with focal loss"),
    "prompt-eta-norm": ({"input_format": "template", "head": "verbalizer", "eta": 1.1},
                        "prompt-tuning with η-norm at prediction"),
    "linear-probe": ({"trains": "head"}, "frozen backbone, only the MLP head trains"),
    "bitfit": ({"trains": "bitfit"}, "CLS head; of the backbone only the biases train (BitFit)"),
    "adapter": ({"trains": "adapter"}, "CLS head; Houlsby adapters after attention and FFN, backbone frozen"),
    "adapter-pfeiffer": ({"trains": "adapter", "adapter_kind": "pfeiffer"},
                         "CLS head; Pfeiffer adapters after the FFN, backbone frozen"),
    "prompt-adapter": ({"input_format": "template", "head": "verbalizer", "trains": "adapter"},
                       "prompt-tuning head with Houlsby adapters, backbone frozen"),
    "lora": ({"trains": "lora"}, "CLS head; LoRA (r=8, α=16) on query and value, backbone frozen (via PEFT)"),
    "prompt-lora": ({"input_format": "template", "head": "verbalizer", "trains": "lora"},
                    "prompt-tuning head with LoRA, backbone frozen"),
    "prefix": ({"trains": "prefix"}, "CLS head; 4 trainable key/value prefixes in every layer, backbone frozen"),
    "prompt-prefix": ({"input_format": "template", "head": "verbalizer", "trains": "prefix"},
                      "prompt-tuning head with prefix tuning, backbone frozen"),
    "y-tuning": ({"head": "label-decoder", "trains": "head", "loss": "triplet", "margin": 0.2,
                  "decoder_width": 128},
                 "Y-Tuning: frozen backbone; label embeddings + a 2-layer width-128 decoder over the text "
                 "features, linear label pointer; triplet loss (margin 0.2); features cached in training"),
    "y-tuning-ce": ({"head": "label-decoder", "trains": "head", "decoder_width": 128},
                    "Y-Tuning with cross-entropy instead of the triplet loss"),
    "soft-prompt": ({"input_format": "template", "head": "verbalizer", "trains": "prompt", "soft_tokens": 20},
                    "20 soft tokens before the template, MLM head + verbalizer; backbone frozen "
                    "(with hard template words: a hybrid prompt)"),
}


def config_from_preset(preset: str, **overrides) -> ClassifierConfig:
    """Resolve a preset name and apply axis overrides (unknown keys are an error)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ClassifierConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown classifier option(s) {bad}; known: {sorted(fields)}")
    values = dict(PRESETS[preset][0])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ClassifierConfig(**values)


class Classifier(nn.Module):
    """An encoder, an input format and a head, side by side (composition, not subclasses)."""

    def __init__(self, config: ClassifierConfig, labels: list[str], backbone: Backbone,
                 verbalizer: Verbalizer | None = None, backbone_fingerprint: str | None = None,
                 task: str = "default"):
        super().__init__()
        if not re.fullmatch(r"[A-Za-z0-9_-]+", task):
            raise ValueError(f"task name {task!r}: use letters, digits, '_' and '-' only")
        self.config = config
        self.task = task
        self.labels = list(labels)
        self.tokenizer = backbone.tokenizer
        self.backbone_name = backbone.name
        self.encoder = drop_pooler(backbone.encoder)
        self.template = Template(config.full_template) if config.input_format == "template" else None
        self.fingerprint = backbone_fingerprint or fingerprint(self.encoder)
        enc_cfg = self.encoder.config
        hidden = enc_cfg.hidden_size if hasattr(enc_cfg, "hidden_size") else enc_cfg.dim
        ln_eps = getattr(enc_cfg, "layer_norm_eps", 1e-12)
        self.verbalizer = None
        if config.head == "mlp":
            self.head = MLPHead(hidden, len(labels), config.activation, config.dropout,
                                layer_norm=config.layer_norm != "none", ln_eps=ln_eps)
        elif config.head == "label-decoder":
            self.verbalizer = verbalizer or Verbalizer(labels)
            self.head = LabelDecoderHead(hidden, self._label_init(), config.label_vectors, config.decoder_layers,
                                         config.decoder_heads, config.decoder_width, config.decoder_dropout,
                                         config.label_pointer)
        else:
            self.verbalizer = verbalizer or Verbalizer(labels)
            if self.verbalizer.labels != self.labels:
                raise ValueError("the verbalizer's labels differ from the classifier's label space")
            emb = self.encoder.get_input_embeddings().weight
            decoder = nn.Parameter(emb.detach().clone()) if config.decouple_embeddings else emb
            bias = nn.Parameter(torch.zeros(emb.shape[0]))
            token_map = self.verbalizer.token_ids(self.tokenizer)
            act = getattr(enc_cfg, "hidden_act", getattr(enc_cfg, "activation", "gelu"))
            self.head = VerbalizerHead(hidden, decoder, bias, [token_map[y] for y in labels],
                                       act if isinstance(act, str) else "gelu", ln_eps)
        if backbone.mlm is not None:
            self._init_from_mlm(backbone.mlm)
        self.tuning = nn.Module()  # small task modules; backbone parameter names stay untouched
        self.router = TaskRouter.of(self.encoder)
        if task in self.router.tasks:
            raise ValueError(f"a task named {task!r} is already attached to this backbone; pick another name")
        if config.trains == "adapter":
            sites = adapter_sites(self.encoder, config.adapter_kind)
            self.tuning.adapters = make_adapters(sites, hidden, config.adapter_size,
                                                 config.adapter_activation, config.adapter_init)
            self.router.add_adapters(task, sites, self.tuning.adapters)
        if config.trains == "lora":
            add_lora(self.encoder, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets,
                     name=task)
            self.router.add_lora(task)
        if config.trains == "prefix":
            self.tuning.prefix = Prefix(enc_cfg.num_hidden_layers if hasattr(enc_cfg, "num_hidden_layers")
                                        else enc_cfg.n_layers, hidden, config.prefix_length, config.prefix_reparam)
            self.router.add_prefix(task, self.tuning.prefix)
        soft_ids = self.template.soft_init_ids(self.tokenizer) if self.template is not None else []
        if soft_ids:
            self.tuning.soft_prompt = nn.Parameter(self._init_soft(soft_ids))  # (soft tokens, hidden)
            if config.prompt_init:
                self._load_prompt(config.prompt_init)
            self.router.add_soft_prompt(task, self.tuning.soft_prompt)
        self.router.tasks.add(task)
        self.set_trainable()

    def _random_rows(self, n: int, how: str) -> torch.Tensor:
        """``n`` embeddings of random common words (``vocab``) or random vectors of the
        embeddings' scale (``random``)."""
        emb = self.encoder.get_input_embeddings().weight.detach()
        if how == "random":
            return torch.stack([torch.randn(emb.shape[1]) * emb.std() for _ in range(n)])
        # like Lester et al.: sample among common real words (vocabularies are roughly frequency
        # ordered); skip special, [unused] and sub-word tokens
        special = set(self.tokenizer.all_special_ids)
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(min(len(emb), len(self.tokenizer)))))
        pool = torch.tensor([i for i, t in enumerate(tokens)
                             if i not in special and t.lstrip("Ġ▁").isalpha()][:5000])
        return torch.stack([emb[pool[torch.randint(len(pool), ()).item()]] for _ in range(n)]).clone()

    def _init_soft(self, ids: list[int | None]) -> torch.Tensor:
        emb = self.encoder.get_input_embeddings().weight.detach()
        missing = [k for k, i in enumerate(ids) if i is None]
        rows = emb[[i if i is not None else 0 for i in ids]].clone()
        if missing:
            rows[missing] = self._random_rows(len(missing), self.config.soft_init)
        return rows

    def _load_prompt(self, directory: str) -> None:
        """Start the prepended soft tokens (and a verbalizer head's transform) from a pre-trained prompt."""
        from .ppt import load_prompt
        if not self.config.soft_tokens:
            raise ValueError("prompt_init needs prepended soft tokens: set soft_tokens to the prompt's length")
        tensors, _ = load_prompt(directory, self.fingerprint, self.config.soft_tokens)
        with torch.no_grad():
            self.tuning.soft_prompt[:self.config.soft_tokens] = tensors["soft_prompt"]
            if self.config.head == "verbalizer":
                for name, value in tensors.items():
                    if name.startswith("head."):
                        self.head.get_parameter(name[5:]).copy_(value)

    def _label_init(self) -> torch.Tensor:
        """(labels x vectors, hidden) starting label embeddings for the label decoder."""
        cfg = self.config
        n = len(self.labels) * cfg.label_vectors
        if cfg.label_init != "words":
            return self._random_rows(n, cfg.label_init)
        emb = self.encoder.get_input_embeddings().weight.detach()
        token_map = self.verbalizer.token_ids(self.tokenizer)
        words = torch.stack([torch.stack([emb[w].mean(0) for w in token_map[y]]).mean(0) for y in self.labels])
        rows = words.repeat_interleave(cfg.label_vectors, 0)
        if cfg.label_vectors > 1:  # identical copies would receive identical gradients forever
            rows = rows + torch.randn_like(rows) * emb.std() * 0.1
        return rows

    # -- construction helpers ------------------------------------------------
    def _init_from_mlm(self, parts) -> None:
        if self.config.head == "verbalizer":
            self.head.load_pretrained(parts)
            if parts.missing:
                warnings.warn(
                    f"backbone {self.backbone_name!r} has no pretrained MLM head "
                    f"({', '.join(parts.missing)} missing): the head's transform (dense + LayerNorm) is "
                    f"initialised randomly and the output bias is zero; the decoder is the pretrained "
                    f"{'(copied) ' if self.config.decouple_embeddings else '(tied) '}input embedding "
                    f"matrix. Prompt-based results on this backbone are not those of a real MLM head.",
                    stacklevel=3)
        elif self.config.layer_norm == "pretrained":
            if "LayerNorm" in parts.missing:
                warnings.warn(f"backbone {self.backbone_name!r} has no pretrained MLM-head LayerNorm: "
                              f"the head's LayerNorm is initialised fresh (this equals 'cls-ln')",
                              stacklevel=3)
            else:
                with torch.no_grad():
                    self.head.layer_norm.load_state_dict(parts.layer_norm.state_dict())

    def set_trainable(self) -> None:
        """The head and task modules always train; the backbone as ``config.trains`` says."""
        flags = trainable_flags(self, self.config.trains)
        for name, p in self.named_parameters():
            p.requires_grad_(flags[name])

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def parameter_counts(self) -> dict:
        """Trainable parameters, absolute and as % of the backbone, with and without the head."""
        count = lambda prefix, trainable: sum(  # noqa: E731
            p.numel() for n, p in self.named_parameters()
            if n.startswith(prefix) and (p.requires_grad or not trainable))
        # the base backbone: LoRA matrices live inside the encoder but are not part of it
        backbone = sum(p.numel() for n, p in self.encoder.named_parameters() if lora_task(n) is None)
        head, trainable = count("head.", True), count("", True)
        return {"backbone": backbone, "trainable": trainable, "trainable_head": head,
                "trainable_without_head": trainable - head,
                "pct_of_backbone": 100 * trainable / backbone,
                "pct_of_backbone_without_head": 100 * (trainable - head) / backbone}

    # -- inputs ----------------------------------------------------------------
    def encode(self, texts: list[str], texts_b: list[str] | None = None) -> list[Encoded]:
        if self.template is not None and texts_b is not None and not self.template.uses_text_b:
            warnings.warn(f"the data has a second text but the template {self.config.template!r} has no "
                          f"{{text_b}} slot: the second text is ignored", stacklevel=2)
        if self.template is not None:
            return self.template.encode(self.tokenizer, texts, texts_b, self.config.max_length)
        return encode_plain(self.tokenizer, texts, texts_b, self.config.max_length)

    # -- forward ---------------------------------------------------------------
    @property
    def frozen_features(self) -> bool:
        """True when nothing before the head trains: the encoder's output for a text never
        changes, so training may compute it once and reuse it (``TrainConfig.cache_features``)."""
        return self.config.trains == "head" and not any(True for _ in self.tuning.parameters())

    def train(self, mode: bool = True) -> "Classifier":
        super().train(mode)
        if self.frozen_features:  # fixed features: no dropout inside the frozen backbone
            self.encoder.eval()
        return self

    def features(self, input_ids, attention_mask, token_type_ids=None, soft_positions=None) -> torch.Tensor:
        """The encoder's token features ``(batch, seq, hidden)`` with this task's modules."""
        return self.router.encode([Route(self.task, None, soft_positions)], input_ids, attention_mask,
                                  token_type_ids)

    def forward(self, input_ids, attention_mask, position, token_type_ids=None,
                soft_positions=None, features=None) -> torch.Tensor:
        """Class scores; ``features`` (cached token features) skips the encoder."""
        hidden = self.features(input_ids, attention_mask, token_type_ids, soft_positions) if features is None \
            else features
        return self.scores(hidden, attention_mask, position)

    def scores(self, hidden, attention_mask, position) -> torch.Tensor:
        """The head on token features: (batch, seq, hidden) -> (batch, classes)."""
        if isinstance(self.head, LabelDecoderHead):  # reads every token
            return self.head(hidden, attention_mask)
        return self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), position])

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, target, self.config.loss, self.config.focal_gamma, self.config.margin)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Post-hoc calibration applied at prediction time only (η-norm)."""
        if self.config.eta is None:
            return logits
        return eta_norm(logits, self.head.class_weights()[0].detach().float(), self.config.eta)

    def class_weight_norms(self) -> list[float]:
        return self.head.class_weights()[0].detach().float().norm(dim=-1).tolist()

    # -- save / load -------------------------------------------------------------
    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "tailtune_version": __version__,
            "config": self.config.to_dict(),
            "labels": self.labels,
            "template": self.config.template,
            "verbalizer": self.verbalizer.to_dict() if self.verbalizer else None,
            "backbone": {"name": self.backbone_name, "fingerprint": self.fingerprint,
                         "model_type": self.encoder.config.model_type},
        }

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``tailtune.json``, the weights and ``backbone/`` (encoder config + tokenizer).

        Full fine-tuning saves every weight (``model.safetensors``). When the backbone is
        (partly) frozen only what trained is saved (``module.safetensors``, a task module);
        loading it needs the same base backbone, checked by fingerprint.
        """
        from safetensors.torch import save_file, save_model
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = self.metadata()
        meta["preset"] = (extra or {}).get("preset")
        meta.update({k: v for k, v in (extra or {}).items() if k != "preset"})
        meta["artefact"] = "full" if self.config.trains == "all" else "module"
        self.encoder.config.save_pretrained(directory / "backbone")
        self.tokenizer.save_pretrained(directory / "backbone")
        if meta["artefact"] == "full":
            save_model(self, str(directory / "model.safetensors"))
        else:
            # LoRA adapters carry the task name inside the encoder; the file uses "default"
            trained = {rename_lora(n, "default"): p.detach().cpu().contiguous()
                       for n, p in self.named_parameters() if p.requires_grad}
            save_file(trained, str(directory / "module.safetensors"))
        (directory / "tailtune.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu",
             backbone: str | Backbone | None = None, task: str = "default") -> "Classifier":
        """Load a saved classifier; a task module goes onto ``backbone`` (default: the one it was
        trained on), which must be the same base model. Pass a loaded ``Backbone`` to attach the
        module, as ``task``, to an encoder other task modules already use."""
        from safetensors.torch import load_file, load_model
        from transformers import AutoConfig, AutoModel
        from .backbone import _quiet_transformers, load_tokenizer
        directory = Path(directory)
        meta_path = directory / "tailtune.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a saved tailtune classifier (no tailtune.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{directory} was saved by a newer tailtune (format "
                             f"{meta['format_version']}); upgrade tailtune to load it")
        # the saved weights already hold the pre-trained prompt: do not look for its directory again
        meta["config"].setdefault("label_pointer", "task")  # saved before the pointer was an option
        config = ClassifierConfig(**{**meta["config"], "prompt_init": None})
        verbalizer = Verbalizer(meta["labels"], meta["verbalizer"]) if meta.get("verbalizer") else None
        saved = meta["backbone"]
        if meta.get("artefact", "full") == "full":
            with _quiet_transformers():
                encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory / "backbone"))
            bb = Backbone(encoder, load_tokenizer(str(directory / "backbone")), saved["name"])
            model = cls(config, meta["labels"], bb, verbalizer, saved["fingerprint"])
            load_model(model, str(directory / "model.safetensors"), strict=True, device=str(device))
        else:
            bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone or saved["name"])
            found = fingerprint(bb.encoder)
            if found != saved["fingerprint"]:
                raise ValueError(
                    f"{directory} is a task module for backbone {saved['name']!r} (fingerprint "
                    f"{saved['fingerprint']}), but {bb.name!r} has fingerprint {found}: "
                    f"a different model. Load it onto the backbone it was trained on (backbone=...).")
            model = cls(config, meta["labels"], bb, verbalizer, saved["fingerprint"], task=task)
            state = {rename_lora(k, task): v
                     for k, v in load_file(str(directory / "module.safetensors"), device=str(device)).items()}
            missing, unexpected = model.load_state_dict(state, strict=False)
            absent = sorted(set(model.trainable_parameter_names()) - set(state))
            if unexpected or absent:
                raise ValueError(f"{directory}/module.safetensors does not match its config: "
                                 f"missing {absent[:5]}, unexpected {unexpected[:5]}")
        model.saved_metadata = meta
        model.config = ClassifierConfig(**meta["config"])
        return model.to(device).eval()


def build_classifier(config: ClassifierConfig, labels: list[str], backbone: str | None = None,
                     verbalizer: dict | None = None, trust_remote_code: bool = False) -> Classifier:
    """Load the backbone (with its MLM head when the config needs one) and assemble a classifier."""
    bb = load_backbone(backbone, with_mlm_head=config.needs_mlm_head, trust_remote_code=trust_remote_code)
    verb = Verbalizer(labels, verbalizer) if config.head in ("verbalizer", "label-decoder") else None
    if verb is not None:
        verb.check(bb.tokenizer)
    return Classifier(config, labels, bb, verb)
