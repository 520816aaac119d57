"""The "what trains" axis: everything, the head only, BitFit, adapters, LoRA, prefixes, soft prompts.

A mechanism never renames backbone parameters: adapters and prefixes keep their parameters under
``Classifier.tuning`` and reach the encoder through ``routing.TaskRouter`` hooks; LoRA matrices sit
inside the encoder's linear layers under the task's name, owned by that task. So a frozen backbone
stays a plain Hugging Face model that many task modules can share.

A builder returns a ``Mechanism``: the modules it adds (placed under ``Classifier.tuning``) and the
role of each base-backbone parameter (``"backbone"`` trains at ``lr``, ``"module"`` at ``module_lr``,
None is frozen). Traits: ``shares_backbone`` (False when the backbone itself changes: such a model
cannot sit beside other tasks on one backbone) and ``full_artefact`` (save every weight, not a module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from ..registry import TRAINS, BuildContext, NoOptions


@dataclass
class Mechanism:
    modules: dict[str, nn.Module] = field(default_factory=dict)
    backbone_role: Callable[[str], "str | None"] = lambda name: None


@TRAINS.register("all", NoOptions, description="every weight (full fine-tuning)", shares_backbone=False,
                 full_artefact=True)
def build_all(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism(backbone_role=lambda name: "backbone")


@TRAINS.register("head", NoOptions, description="nothing but the head (frozen backbone)", shares_backbone=True,
                 full_artefact=False)
def build_head_only(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism()


@TRAINS.register("bitfit", NoOptions, description="the backbone's bias terms (BitFit)", shares_backbone=False,
                 full_artefact=False)
def build_bitfit(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism(backbone_role=lambda name: "module" if name.endswith(".bias") else None)


def _needs_soft_tokens(config: Any) -> None:
    template = getattr(config.of("input_format"), "full_template", "")
    if "{soft" not in template:
        raise ConfigError("trains='prompt' trains soft prompt tokens: use a template input with soft_tokens > 0 "
                          "or {soft:N} in the template")


@TRAINS.register("prompt", NoOptions, description="soft prompt tokens of the template (backbone frozen)",
                 shares_backbone=True, full_artefact=False, check=_needs_soft_tokens)
def build_prompt(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism()  # the soft tokens belong to the template input; they always train


from . import adapters, lora, prefix  # noqa: E402,F401  (register their entries)
