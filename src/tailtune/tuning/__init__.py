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

from . import adapters, lora, mechanisms, prefix  # noqa: F401  (register their entries)
from .mechanisms import Mechanism

__all__ = ["Mechanism"]
