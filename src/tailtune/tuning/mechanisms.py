"""The simple "what trains" entries (all, head, bitfit, prompt) and the ``Mechanism`` every builder returns."""
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
                 full_artefact=True, trains_body=True)
def build_all(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism(backbone_role=lambda name: "backbone")


@TRAINS.register("head", NoOptions, description="nothing but the head (frozen backbone)", shares_backbone=True,
                 full_artefact=False, trains_body=False)
def build_head_only(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism()


@TRAINS.register("bitfit", NoOptions, description="the backbone's bias terms (BitFit)", shares_backbone=False,
                 full_artefact=False, trains_body=True)
def build_bitfit(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism(backbone_role=lambda name: "module" if name.endswith(".bias") else None)


def _needs_soft_tokens(config: Any) -> None:
    template = getattr(config.of("input_format"), "full_template", "")
    if "{soft" not in template:
        raise ConfigError("trains='prompt' trains soft prompt tokens: use a template input with soft_tokens > 0 "
                          "or {soft:N} in the template")


@TRAINS.register("prompt", NoOptions, description="soft prompt tokens of the template (backbone frozen)",
                 shares_backbone=True, full_artefact=False, trains_body=True, check=_needs_soft_tokens)
def build_prompt(opts: NoOptions, ctx: BuildContext) -> Mechanism:
    return Mechanism()  # the soft tokens belong to the template input; they always train

