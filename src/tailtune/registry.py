"""One registry per axis of a classifier; an entry is a self-checking options dataclass plus a builder.

A classifier is *input format x readout x head x what trains x objective x calibration*
(see ``../shared/DESIGN.md``). Each axis is a ``Registry``; each entry registers itself where it
is implemented, with a decorator on its builder::

    @OBJECTIVES.register("focal", FocalOptions, description="focal loss (Lin et al., 2017)")
    def build_focal(opts: FocalOptions, ctx: BuildContext) -> Objective: ...

``Classifier`` looks entries up by name and never branches on one. An entry may declare
``requires`` (names of entries it needs on other axes), a ``check(config)`` for anything more,
and axis-specific ``traits`` (for example, whether a head reads a vector or the whole sequence).
Options belong to exactly one entry: setting an option of an entry that is not selected is an
error (``config.ClassifierConfig``).
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError, did_you_mean


@dataclass
class NoOptions:
    """An entry without options."""


@dataclass(frozen=True)
class Entry:
    """One registered choice of an axis."""

    axis: str
    name: str
    options: type
    build: Callable[..., Any]
    description: str
    requires: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    check: Callable[[Any], None] | None = None
    traits: Mapping[str, Any] = field(default_factory=dict)

    def option_fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.options))

    def option_names(self) -> list[str]:
        return [f.name for f in self.option_fields()]

    def make_options(self, values: Mapping[str, Any]) -> Any:
        """The options dataclass from ``values`` (missing ones take their defaults); it checks itself."""
        return self.options(**values)

    def trait(self, key: str, default: Any = None) -> Any:
        return self.traits.get(key, default)

    def option_docs(self) -> dict[str, str]:
        return field_docs(self.options)


class Registry:
    """The entries of one axis, by name."""

    def __init__(self, axis: str, help: str):
        self.axis = axis
        self.help = help
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, options: type = NoOptions, *, description: str,
                 requires: Mapping[str, tuple[str, ...]] | None = None,
                 check: Callable[[Any], None] | None = None, **traits: Any) -> Callable:
        """Decorator for a builder ``build(opts, ctx)``: registers it as entry ``name`` of this axis."""
        if not dataclasses.is_dataclass(options):
            raise TypeError(f"{self.axis} entry {name!r}: options must be a dataclass")

        def decorate(build: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.axis} entry {name!r} is registered twice")
            self._entries[name] = Entry(self.axis, name, options, build, description,
                                        dict(requires or {}), check, dict(traits))
            return build
        return decorate

    def remove(self, name: str) -> Entry:
        """Unregister an entry (plugins and tests that register one for a while)."""
        return self._entries.pop(name)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise ConfigError(f"{self.axis}={name!r} is not one of {', '.join(self._entries)}"
                              f"{did_you_mean(name, self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


INPUT_FORMATS = Registry("input_format", "how a text (and an optional second text) becomes tokens")
READOUTS = Registry("readout", "what the head reads from the encoder's token vectors")
HEADS = Registry("head", "what turns the read vectors into one score per class")
TRAINS = Registry("trains", "what trains besides the head")
OBJECTIVES = Registry("objective", "the training loss")
CALIBRATIONS = Registry("calibration", "post-hoc adjustment of the class scores at prediction")

AXES: dict[str, Registry] = {r.axis: r for r in (INPUT_FORMATS, READOUTS, HEADS, TRAINS, OBJECTIVES, CALIBRATIONS)}
# training stages around the main fine-tuning; a classifier lists any number of them (``ClassifierConfig.stages``)
STAGES = Registry("stage", "a training stage before or after the main fine-tuning")


# ---------------------------------------------------------------- checks shared by options dataclasses

def check_choice(obj: Any, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}"
                          f"{did_you_mean(value, allowed)}")


def check_min(obj: Any, name: str, minimum: float, strict: bool = False) -> None:
    value = getattr(obj, name)
    bad = value is None or (value <= minimum if strict else value < minimum)
    if bad:
        raise ConfigError(f"{name}={value!r}: must be {'>' if strict else '>='} {minimum}")


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings under a dataclass's fields, so they double as CLI help; fields inherited from a dataclass
    base keep the docstrings written there (a subclass's own docstring wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    """The docstrings under the fields written in ``cls``'s own source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs, last = {}, None
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) and last:
            docs[last] = " ".join(str(node.value.value).split())
            last = None
        else:
            last = None
    return docs


@dataclass
class BuildContext:
    """What a builder may use: the encoder, tokenizer, labels and the classifier's other choices."""

    config: Any  # the ClassifierConfig being built
    labels: list[str]
    encoder: Any  # the shared Hugging Face encoder (never renamed or wrapped)
    tokenizer: Any
    router: Any  # tuning.routing.TaskRouter of the encoder
    task: str = "default"
    mlm: Any = None  # backbone.MLMParts when the backbone was loaded with its MLM head
    verbalizer: Any = None  # inputs.verbalizer.Verbalizer when the head uses label words
    backbone_name: str = "default"
    class_counts: Mapping[str, int] | None = None  # training examples per label (None when loading)
    loading: bool = False  # True when rebuilding a saved classifier: its trained weights follow

    @property
    def hidden(self) -> int:
        cfg = self.encoder.config
        return cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.dim

    @property
    def layers(self) -> int:
        cfg = self.encoder.config
        return cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layers

    @property
    def ln_eps(self) -> float:
        return getattr(self.encoder.config, "layer_norm_eps", 1e-12)
