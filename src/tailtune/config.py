"""A classifier's configuration: one registry entry per axis, the options of those entries, presets.

``ClassifierConfig`` names one entry per axis (input format, readout, head, what trains, objective,
calibration) and holds the options of exactly those entries. It checks itself: unknown entries,
options that belong to an entry not in use (``lora_r`` with ``trains='adapter'``), and
combinations an entry does not support are errors that say what to change.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any, Mapping, NamedTuple

from . import heads, inputs, objectives, readouts, stages, tuning  # noqa: F401  (register the built-in entries)
from .inputs import demonstrations  # noqa: F401
from .errors import ConfigError, did_you_mean
from .loop import TrainConfig
from .registry import AXES, STAGES, Entry

AXIS_NAMES: tuple[str, ...] = tuple(AXES)


def all_options() -> dict[str, list[Entry]]:
    """Every option name -> the entries (of any axis, or stages) that declare it."""
    found: dict[str, list[Entry]] = {}
    for registry in (*AXES.values(), STAGES):
        for entry in registry:
            for name in entry.option_names():
                found.setdefault(name, []).append(entry)
    return found


@dataclass
class ClassifierConfig:
    """One entry per axis and their options. Field docstrings double as CLI help."""

    input_format: str = "plain"
    """input format: plain ([CLS] text [SEP]), template (a prompt with a [MASK]) or demonstrations (the prompt then
    one example per class from the training set, LM-BFF)"""
    readout: str = "auto"
    """what the head reads: auto (chosen by the head, input and backbone), cls (first token), mask (the template's
    [MASK]), mean or max (pooled tokens) or tokens (every token)"""
    head: str = "mlp"
    """head: cosine (s·cos(w_c, h) from class prototypes), mlp (MLP on the read vector), verbalizer (pretrained MLM
    head + label words), label-decoder (Y-Tuning) or early-exit (a classifier at every layer)"""
    trains: str = "all"
    """what trains besides the head: all, head (nothing else), bitfit (biases), adapter, lora, prefix, prompt (soft
    tokens)"""
    objective: str = "ce"
    """training loss: ce, focal, triplet (Y-Tuning's margin loss), logit-adjusted (Menon et al., 2021), class-balanced
    (effective number, Cui et al., 2019) or ldam-drw (Cao et al., 2019)"""
    calibration: str = "none"
    """post-hoc score adjustment at prediction: none, eta-norm or logit-adjust"""
    stages: tuple[str, ...] = ()
    """training stages around the main fine-tuning"""
    max_length: int = 128
    """maximum tokens per example (texts are truncated, templates never)"""
    options: dict[str, Any] = field(default_factory=dict)
    """options of the chosen entries (e.g. lora_r for trains='lora'); missing ones take their defaults"""

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages or ())
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages={list(self.stages)} names a stage twice")
        entries = {axis: AXES[axis].get(getattr(self, axis)) for axis in AXIS_NAMES}
        entries.update({f"stage:{name}": STAGES.get(name) for name in self.stages})
        owner = {name: axis for axis, entry in entries.items() for name in entry.option_names()}
        for name in self.options:
            if name not in owner:
                raise ConfigError(misplaced_option(name, self))
        self._parsed = {axis: entry.make_options({k: v for k, v in self.options.items() if owner[k] == axis})
                        for axis, entry in entries.items()}
        self.options = {name: getattr(self._parsed[axis], name) for name, axis in owner.items()}
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length!r} is too small: use 8 or more tokens")
        reads, gives = entries["head"].trait("reads"), entries["readout"].trait("reads")
        if gives != "any" and reads != gives:
            raise ConfigError(f"head={self.head!r} reads a {reads}, but readout={self.readout!r} gives a {gives}; "
                              f"choose a readout that gives a {reads} ("
                              f"{', '.join(e.name for e in AXES['readout'] if e.trait('reads') == reads)})")
        for entry in entries.values():
            if entry.check is not None:
                entry.check(self)
            for axis, allowed in entry.requires.items():
                deferred = entries[axis].trait("resolve") is not None  # checked again once resolved
                if getattr(self, axis) not in allowed and not deferred:
                    raise ConfigError(f"{entry.axis}={entry.name!r} needs {axis} "
                                      f"{' or '.join(repr(a) for a in allowed)}, not {getattr(self, axis)!r}")

    def resolved(self, backbone: Any) -> "ClassifierConfig":
        """This configuration with every entry that is chosen when the classifier is built (``auto``)
        replaced by what it resolves to on ``backbone``."""
        config = self
        for axis in AXIS_NAMES:
            resolve = config.entry(axis).trait("resolve")
            if resolve is not None:
                config = dataclasses.replace(config, **{axis: resolve(config, backbone)})
        return config

    def fitted(self, **facts: Any) -> "ClassifierConfig":
        """This configuration with the options that are chosen from the training data (``auto`` values whose entry
        has a ``fit_options(options, facts)`` trait) replaced by what ``facts`` (e.g. ``unlabeled``: how many
        unlabelled texts come with the training data; ``per_class``, ``classes``) choose. An entry whose options
        cannot serve the data refuses it there (``ConfigError``), before the backbone loads or anything trains."""
        updates: dict[str, Any] = {}
        for key, entry in [*((axis, self.entry(axis)) for axis in AXIS_NAMES),
                           *((f"stage:{e.name}", e) for e in self.stage_entries())]:
            choose = entry.trait("fit_options")
            if choose is not None:
                updates.update(choose(self.of(key), facts))
        return self.with_options(**updates) if updates else self

    def with_options(self, **updates: Any) -> "ClassifierConfig":
        """This configuration with some options changed (checked again)."""
        return dataclasses.replace(self, options={**self.options, **updates})

    def entry(self, axis: str) -> Entry:
        return AXES[axis].get(getattr(self, axis))

    def of(self, axis: str) -> Any:
        """The options dataclass of the entry chosen on ``axis`` (``"stage:NAME"`` for a stage's)."""
        return self._parsed[axis]

    def stage_entries(self) -> list[Entry]:
        return [STAGES.get(name) for name in self.stages]

    @property
    def needs_mlm_head(self) -> bool:
        """Does any chosen entry need the backbone's pretrained MLM head?"""
        for axis in AXIS_NAMES:
            need = self.entry(axis).trait("needs_mlm_head", False)
            if need(self.of(axis)) if callable(need) else need:
                return True
        return False

    def takes_unlabeled(self, mlm_weight: float = 1e-4) -> bool:
        """Does any chosen entry learn from unlabelled texts (its ``takes_unlabeled(config, mlm_weight)`` trait:
        PET's auxiliary MLM loss on the verbalizer head, FastBERT's self-distillation of early exits)?"""
        return any((takes := entry.trait("takes_unlabeled")) and takes(self, mlm_weight)
                   for entry in [self.entry("head"), *self.stage_entries()])

    @property
    def uses_label_words(self) -> bool:
        return bool(self.entry("head").trait("uses_label_words", False))

    def to_dict(self) -> dict:
        """The axes and options; an option an entry gained after runs were recorded (its ``neutral_options`` trait:
        {option: the value that computes what runs did before it existed}) is left out at that value, so what was
        saved, checkpointed or finished before reads as the same configuration (``from_dict`` restores it)."""
        neutral = {k: v for entry in (*map(self.entry, AXIS_NAMES), *self.stage_entries())
                   for k, v in entry.trait("neutral_options", {}).items()}
        return {**{axis: getattr(self, axis) for axis in AXIS_NAMES}, "stages": list(self.stages),
                "max_length": self.max_length,
                "options": {k: v for k, v in self.options.items() if neutral.get(k, ...) != v}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassifierConfig":
        """From ``to_dict()``; also reads the flat configuration of tailtune 0.1 artefacts."""
        if "options" in d:
            return cls(**{k: d[k] for k in (*AXIS_NAMES, "stages", "max_length", "options") if k in d})
        return from_flat(d)


def owned_options(axes: Mapping[str, Any]) -> set[str]:
    """The option names of the entries ``axes`` chooses (axes left out take their defaults) and of its stages."""
    defaults = {f.name: f.default for f in dataclasses.fields(ClassifierConfig) if f.name in AXIS_NAMES}
    names = {n for a in AXIS_NAMES for n in AXES[a].get(axes.get(a, defaults[a])).option_names()}
    return names | {n for stage in axes.get("stages", ()) for n in STAGES.get(stage).option_names()}


def misplaced_option(name: str, config: Any) -> str:
    """Why ``name`` is not an option of this configuration, and what to do."""
    owners = all_options().get(name)
    if not owners:
        return (f"unknown option {name!r}{did_you_mean(name, list(all_options()) + list(AXIS_NAMES))}; "
                f"`tailtune axes` lists every option")
    if owners[0].axis == STAGES.axis:
        return (f"option {name!r} belongs to stage {owners[0].name!r}, but this classifier's stages are "
                f"{list(config.stages)}: add it (--stages {owners[0].name}) or drop {name}")
    where = " or ".join(f"{e.axis}={e.name!r}" for e in owners)
    now = ", ".join(f"{e.axis}={getattr(config, e.axis)!r}" for e in {e.axis: e for e in owners}.values())
    return (f"option {name!r} belongs to {where}, but this classifier has {now}: choose "
            f"{owners[0].axis}={owners[0].name!r} (--{owners[0].axis.replace('_', '-')} {owners[0].name}) "
            f"or drop {name}")


def from_flat(d: Mapping[str, Any]) -> ClassifierConfig:
    """The flat configuration of tailtune 0.1 (format 1) as a ClassifierConfig."""
    d = dict(d)
    head = d.get("head", "mlp")
    template_input = d.get("input_format", "plain") == "template"
    axes = {"input_format": d.get("input_format", "plain"),
            "readout": "tokens" if head == "label-decoder" else ("mask" if template_input else "cls"),
            "head": head, "trains": d.get("trains", "all"), "objective": d.get("loss", "ce"),
            "calibration": "none" if d.get("eta") is None else "eta-norm"}
    if head == "label-decoder":
        d.setdefault("label_pointer", "task")  # saved before the pointer was an option
    owned = owned_options(axes)
    options = {k: v for k, v in d.items() if k in owned}
    return ClassifierConfig(**axes, max_length=d.get("max_length", 128), options=options)


# ---------------------------------------------------------------- presets

class Preset(NamedTuple):
    values: dict  # axis entries and options
    description: str
    train: dict = {}  # the method's training recipe: TrainConfig defaults (none: TrainConfig's own)


_PROMPT = {"input_format": "template", "readout": "mask", "head": "verbalizer"}
_CLS = {"readout": "cls"}  # CLS-tuning reads [CLS] by definition, whatever the backbone declares

# name -> values over the axes. Every row of the long-tail paper's grid keeps its paper definition.
# `auto` is the default: chosen by measurement against the peers users pick instead (README, "How the
# default was chosen"); it reads what the backbone declares and starts a cosine head from the class
# prototypes; few-shot, the body learns from pairs first, and with the fewest examples only the head trains
# after (SetFit's recipe), else everything fine-tunes with a higher learning rate for the head than the body;
# the head may then remember the training texts (each class's nearest one mixed into its score, its weight chosen on
# dev, none where dev shows no gain beyond its noise);
# the prediction subtracts τ·log(training prior), τ chosen on dev for test data like a dev set you give, or for a
# class-balanced test set when the dev set was carved from imbalanced training data (a no-op on a balanced one).
AUTO_TRAIN = {"epochs": 10.0, "min_steps": 50, "batch_size": 32, "lr": 5e-5, "head_lr": 1e-3, "eval_times": 10,
              "patience": 3, "patience_from": 0.5}
_AUTO = {"readout": "auto", "head": "cosine", "layer_norm": "auto", "stages": ("contrastive", "memory"),
         "contrastive_below": 64, "contrastive_head_only_below": 17, "calibration": "logit-adjust", "adjust_tau": 0.0,
         "adjust_tau_from_dev": True, "adjust_target": "auto"}
# the early-exit presets: `auto` with a cosine classifier after every layer, without the fitted logit adjustment
# (their speed/quality curves were measured before `auto` had it; --calibration logit-adjust --adjust-tau-from-dev
# adds it)
_LA = ("calibration", "adjust_tau", "adjust_tau_from_dev", "adjust_target")
_EXIT = {**{k: v for k, v in _AUTO.items() if k not in (*_LA, "layer_norm")}, "head": "early-exit",
         "exit_head": "cosine", "stages": ("contrastive",)}  # (the memory is the cosine head's alone)
_EXIT_TWO_STAGE = {**_EXIT, "stages": ("contrastive", "exit-heads")}

PRESETS: dict[str, Preset] = {
    "auto": Preset(dict(_AUTO),
                   "the default: the backbone's own pooling (mean on sentence encoders); a cosine head started from "
                   "the class prototypes; below 64 training examples per class, a contrastive stage (class-balanced "
                   "pairs) tunes the body first; then, at 16 per class or fewer, only the head trains, else "
                   "everything is fine-tuned (body lr 5e-5, head lr 1e-3), from 64 per class with a LayerNorm "
                   "before the head; up to 10 epochs (50 updates at least), best dev macro-F1 (stops after 3 "
                   "evaluations without a better one, counted from half of training on); then a memory of the "
                   "training texts (each class's nearest one mixed into its score, weight λ chosen on dev, none "
                   "where dev shows no gain beyond its noise); then post-hoc logit adjustment, its τ chosen on dev: "
                   "by macro-F1 for test data like a dev set you give, by class-balanced log-loss (a balanced test "
                   "set) for a dev set carved from imbalanced training data",
                   AUTO_TRAIN),
    "cls": Preset(dict(_CLS), "CLS-tuning: tanh MLP head on [CLS], all weights, cross-entropy"),
    "cls-relu": Preset({**_CLS, "activation": "relu"}, "CLS-tuning with a ReLU MLP head"),
    "cls-eta-norm": Preset({**_CLS, "calibration": "eta-norm"},
                           "CLS-tuning, class scores divided by ||w_c||^1.1 at prediction"),
    "cls-focal": Preset({**_CLS, "objective": "focal"}, "CLS-tuning with focal loss (γ=1)"),
    "cls-prompt": Preset({"input_format": "template", "readout": "mask"},
                         "CLS-tuning w/ prompt: template input, MLP head on [MASK]"),
    "cls-ln": Preset({**_CLS, "layer_norm": "fresh"}, "CLS-tuning w/ LN: LayerNorm before the output layer"),
    "cls-pt-ln": Preset({**_CLS, "layer_norm": "pretrained"}, "CLS-tuning w/ pt. LN: that LayerNorm from the MLM head"),
    "prompt": Preset(dict(_PROMPT), "prompt-tuning: template, pretrained MLM head + verbalizer"),
    "prompt-ed": Preset({**_PROMPT, "decouple_embeddings": True},
                        "prompt-tuning w/ ed.: output embeddings decoupled from input embeddings"),
    "prompt-focal": Preset({**_PROMPT, "objective": "focal"}, "prompt-tuning with focal loss"),
    "prompt-eta-norm": Preset({**_PROMPT, "calibration": "eta-norm"}, "prompt-tuning with η-norm at prediction"),
    "linear-probe": Preset({**_CLS, "trains": "head"}, "frozen backbone, only the MLP head trains"),
    "bitfit": Preset({**_CLS, "trains": "bitfit"}, "CLS head; of the backbone only the biases train (BitFit)"),
    "adapter": Preset({**_CLS, "trains": "adapter"}, "CLS head; Houlsby adapters after attention and FFN, backbone frozen"),
    "adapter-pfeiffer": Preset({**_CLS, "trains": "adapter", "adapter_kind": "pfeiffer"},
                               "CLS head; Pfeiffer adapters after the FFN, backbone frozen"),
    "prompt-adapter": Preset({**_PROMPT, "trains": "adapter"},
                             "prompt-tuning head with Houlsby adapters, backbone frozen"),
    "lora": Preset({**_CLS, "trains": "lora"}, "CLS head; LoRA (r=8, α=16) on query and value, backbone frozen (via PEFT)"),
    "prompt-lora": Preset({**_PROMPT, "trains": "lora"}, "prompt-tuning head with LoRA, backbone frozen"),
    "prefix": Preset({**_CLS, "trains": "prefix"}, "CLS head; 4 trainable key/value prefixes in every layer, backbone frozen"),
    "prompt-prefix": Preset({**_PROMPT, "trains": "prefix"}, "prompt-tuning head with prefix tuning, backbone frozen"),
    "y-tuning": Preset({"readout": "tokens", "head": "label-decoder", "trains": "head", "objective": "triplet",
                        "margin": 0.2, "decoder_width": 128},
                       "Y-Tuning: frozen backbone; label embeddings + a 2-layer width-128 decoder over the text "
                       "features, linear label pointer; triplet loss (margin 0.2); features cached in training"),
    "y-tuning-ce": Preset({"readout": "tokens", "head": "label-decoder", "trains": "head", "decoder_width": 128},
                          "Y-Tuning with cross-entropy instead of the triplet loss"),
    "pabee": Preset({**_EXIT, "exit_rule": "patience", "exit_patience": 3},
                    "early exit (PABEE) on `auto`: a cosine classifier after every layer, trained jointly (losses "
                    "weighted by depth); a row leaves once 3 layers in a row agree", AUTO_TRAIN),
    "deebert": Preset({**_EXIT_TWO_STAGE, "exit_training": "two-stage", "exit_rule": "entropy",
                       "exit_threshold": 0.1},
                      "early exit (DeeBERT) on `auto`: the last classifier trains as in `auto`, then the inner ones "
                      "with everything else frozen; a row leaves once its entropy is below 0.1", AUTO_TRAIN),
    "fastbert": Preset({**_EXIT_TWO_STAGE, "exit_training": "self-distill", "exit_rule": "normalized-entropy",
                        "exit_threshold": 0.15, "exit_inner_head": "auto", "exit_agreement": 0.99},
                       "early exit (FastBERT) on `auto`: the last classifier trains as in `auto`, then the inner ones "
                       "learn its class distribution (self-distillation; unlabelled texts too, --unlabeled, and then "
                       "the inner ones are MLPs) with everything else frozen; a row leaves "
                       "once its entropy is below a share of ln(classes): the largest that keeps 99 % of the answers "
                       "of full depth on a tenth of the unlabelled texts held out (from 1,000 of them), else 0.15",
                       AUTO_TRAIN),
    "soft-prompt": Preset({**_PROMPT, "trains": "prompt", "soft_tokens": 20},
                          "20 soft tokens before the template, MLM head + verbalizer; backbone frozen "
                          "(with hard template words: a hybrid prompt)"),
}


# options that dev may choose, and the switch that says it does: giving the option turns the switch off
CHOSEN_ON_DEV = {"adjust_tau": "adjust_tau_from_dev", "memory_weight": "memory_weight_from_dev"}


def config_from_preset(preset: str, defaults: Mapping[str, Any] | None = None, **overrides: Any) -> ClassifierConfig:
    """A preset with axis entries and options overridden.

    ``overrides`` may name axes (``trains="lora"``), ``max_length`` and options; an option that
    belongs to no chosen entry is an error. A preset's own options are dropped when an override
    moves their axis to another entry. ``defaults`` are options offered by the context (a
    dataset's template and label words): each applies only where a chosen entry takes it and
    neither the preset nor an override set it.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}; "
                          f"`tailtune presets` lists them: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset].values)
    axes = {a: values.pop(a) for a in (*AXIS_NAMES, "stages") if a in values}
    max_length = values.pop("max_length", None)
    user = {}
    for key, value in overrides.items():
        if key in (*AXIS_NAMES, "stages"):
            if value is not None:
                axes[key] = tuple(value) if key == "stages" else value
        elif key == "max_length":
            max_length = value if value is not None else max_length
        else:
            user[key] = value
    if overrides.get("stages") is None:  # a preset's own stage that an override makes inapplicable is dropped
        axes["stages"] = tuple(s for s in axes.get("stages", ()) if _applies(s, axes))
    owned = owned_options(axes)  # the options of the chosen entries
    options = {k: v for k, v in (defaults or {}).items() if k in owned}
    options.update({k: v for k, v in values.items() if k in owned})  # the preset's own win over context
    for value, from_dev in CHOSEN_ON_DEV.items():  # a value the user gives is the value used, not one dev replaces
        if user.get(value) is not None and from_dev not in user and from_dev in owned:
            options[from_dev] = False
    options.update(user)  # and the user's over both; foreign options raise in ClassifierConfig
    return ClassifierConfig(**axes, **({"max_length": max_length} if max_length is not None else {}),
                            options=options)


def _applies(stage: str, axes: Mapping[str, Any]) -> bool:
    """Whether a stage's check passes with these axes (the others at their defaults)."""
    entry = STAGES.get(stage)
    values = {**{f.name: f.default for f in fields(ClassifierConfig) if f.name in AXIS_NAMES}, **axes}
    if any(values[axis] not in allowed for axis, allowed in entry.requires.items()):
        return False
    try:
        if entry.check is not None:
            entry.check(SimpleNamespace(**values))
    except ConfigError:
        return False
    return True


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a literal pipe in a markdown table cell


def preset_train_config(preset: str, **overrides: Any) -> TrainConfig:
    """The training recipe of a preset (``TrainConfig`` defaults where it has none), with overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}{did_you_mean(preset, PRESETS)}")
    return TrainConfig(**{**PRESETS[preset].train, **overrides})


def _options_text(values: Mapping[str, Any]) -> str:
    return _cell(", ".join(f"{k}={v}" for k, v in values.items() if k not in (*AXIS_NAMES, "stages")) or "–")


def preset_table() -> str:
    """The README's preset table, generated from the registry (a test keeps the README equal)."""
    rows = ["| preset | " + " | ".join(AXIS_NAMES) + " | stages | options | what it is |",
            "|---|" + "---|" * (len(AXIS_NAMES) + 3)]
    for name, preset in PRESETS.items():
        cfg = config_from_preset(name)
        axes = " | ".join(f"`{getattr(cfg, a)}`" for a in AXIS_NAMES)
        staged = ", ".join(f"`{s}`" for s in cfg.stages) or "–"
        rows.append(f"| `{name}` | {axes} | {staged} | {_options_text(preset.values)} | {_cell(preset.description)} |")
    return "\n".join(rows)


def axes_table() -> str:
    """Every registered entry of every axis with its options and defaults (the README's axes table)."""
    rows = ["| axis | entry | options (default) | what it is |", "|---|---|---|---|"]
    for axis, registry in (*AXES.items(), ("stages", STAGES)):
        for entry in registry:
            opts = ", ".join(f"`{f.name}` ({_cell(_default(f))})" for f in entry.option_fields()) or "–"
            rows.append(f"| {axis} | `{entry.name}` | {opts} | {_cell(entry.description)} |")
    return "\n".join(rows)


def _default(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return "none" if value is None else str(value)
