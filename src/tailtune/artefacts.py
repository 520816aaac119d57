"""Everything tailtune writes and reads back: classifiers, task modules, pre-trained prompts,
checkpoints. Safetensors + JSON only (never pickle), written atomically.

- A directory is written into a temporary sibling and renamed into place (``staged_dir``); a
  directory being replaced is renamed away first and deleted last, so a run killed at any moment
  leaves either the old or the new artefact whole, never a mix.
- Labels are stored as strings; the weights file carries a checksum of the label order and an id
  of the save, so an edited label order, or weights beside another save's ``tailtune.json``, are
  refused when loading.
- Non-finite weights (a diverged run) are never loaded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import torch
from torch import nn

from .backbone import FINGERPRINT_VERSION, Backbone, fingerprint, load_backbone, load_tokenizer, quiet_transformers
from .errors import ArtefactError
from .version import __version__

FORMAT_VERSION = 2  # 1: tailtune 0.1 (flat configuration, fingerprint of the embeddings only)
META, FULL, MODULE = "tailtune.json", "model.safetensors", "module.safetensors"
PROMPT_FILE, PROMPT_META = "prompt.safetensors", "prompt.json"


# ---------------------------------------------------------------- files

def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars as Python numbers and non-finite floats as None (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (a temporary file renamed over the target)."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (a temporary file renamed over the target)."""
    with atomic_open(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """A text file written under a temporary name beside ``path`` (its folder made if missing) and renamed over it
    once complete: an error on the way leaves ``path`` as it was."""
    path = Path(path)
    if path.is_dir():
        raise ArtefactError(f"{path} is a folder; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ArtefactError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ArtefactError(f"{path}: not UTF-8 text (byte {e.start}); is it the right file?") from None
    except json.JSONDecodeError as e:
        raise ArtefactError(f"{path}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg}); "
                            f"fix the file or save it again") from None


def load_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise ArtefactError(f"{path} is missing") from None
    except Exception as e:  # safetensors raises its own error type for damaged files
        raise ArtefactError(f"{path} is damaged or incomplete ({str(e).strip() or type(e).__name__}); "
                            f"restore it, or save or train the model again") from None


def tensor_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise ArtefactError(f"{path} is damaged or incomplete ({str(e).strip() or type(e).__name__}); "
                            f"restore it, or save or train the model again") from None


def check_writable(target: str | Path, overwrite: bool = False) -> Path:
    """Fail before any work when ``target`` (a directory to be written) is in the way or cannot be written."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise ArtefactError(f"{target} exists and is a file; choose a directory for the output")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ArtefactError(f"{target} exists and is not empty; choose another output or pass --overwrite "
                            f"(which replaces the whole directory once the new one is complete)")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=f".{target.name}.probe-")
        probe.close()
    except OSError as e:
        raise ArtefactError(f"cannot write into {parent} ({e.strerror or e}); choose another output "
                            f"directory") from None
    return target


def prepare_output(target: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Check an output directory before any work and return where its run's checkpoints go
    (``<target>/checkpoint``): an unfinished run's checkpoint is continued with ``resume`` or
    discarded with ``overwrite``; anything else in the way needs ``overwrite``."""
    target = Path(target)
    ckpt = target / "checkpoint"
    has = (ckpt / CHECKPOINT_STATE).is_file()
    if resume and not has:
        raise ArtefactError(f"nothing to resume: {target} holds no checkpoint of an unfinished run")
    if has and not resume and not overwrite:
        raise ArtefactError(f"{target} holds a checkpoint of an unfinished run: continue it with --resume, or "
                            f"start over with --overwrite")
    if overwrite and not resume:
        shutil.rmtree(ckpt, ignore_errors=True)
    check_writable(target, overwrite or resume)
    return ckpt


@contextlib.contextmanager
def staged_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling; when the block ends without an
    error it replaces ``target`` (the old one is renamed away first and deleted last)."""
    target = check_writable(target, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def label_checksum(labels: list[str]) -> str:
    return hashlib.sha256(json.dumps(list(labels), ensure_ascii=False).encode()).hexdigest()[:16]


def _check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ArtefactError(f"{where} holds non-finite weights (NaN or inf) in {bad[:3]}: it comes from a diverged "
                            f"run; train it again with a lower learning rate")


# ---------------------------------------------------------------- classifiers

def write_classifier(model: Any, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write a classifier into ``directory`` (not atomic by itself: ``save_classifier`` stages it).

    Full fine-tuning writes every weight (``model.safetensors``); a frozen or partly frozen
    backbone writes only what trained (``module.safetensors``, a task module that loads onto the
    same base backbone, checked by fingerprint). ``backbone/`` holds the encoder config and tokenizer.
    """
    from safetensors.torch import save_file, save_model
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = model.metadata()
    meta["preset"] = (extra or {}).get("preset")
    meta.update({k: v for k, v in (extra or {}).items() if k != "preset"})
    meta["save_id"] = uuid.uuid4().hex
    text = json.dumps(jsonable(meta), indent=2, ensure_ascii=False, allow_nan=False)  # fails before any file
    stamp = {"tailtune_labels_sha256": label_checksum(meta["labels"]), "tailtune_save_id": meta["save_id"]}
    params = dict(model.named_parameters())
    _check_finite(params, f"the classifier to be saved in {directory}")
    with quiet_transformers():
        model.encoder.config.save_pretrained(directory / "backbone")
        model.tokenizer.save_pretrained(directory / "backbone")
    if meta["artefact"] == "full":
        save_model(model, str(directory / FULL), metadata=stamp)
    else:
        save_file(model.module_tensors(), str(directory / MODULE), metadata=stamp)
    from .card import model_card
    (directory / "README.md").write_text(model_card(meta), encoding="utf-8")
    (directory / META).write_text(text + "\n", encoding="utf-8")
    return directory


def save_classifier(model: Any, target: str | Path, extra: Mapping[str, Any] | None = None,
                    overwrite: bool = False) -> Path:
    """Save atomically: a complete new directory replaces ``target``, or nothing changes."""
    with staged_dir(target, overwrite) as tmp:
        write_classifier(model, tmp, extra)
    return Path(target)


def read_classifier(directory: str | Path) -> dict:
    """``tailtune.json`` of a saved classifier, checked (format, labels, weights file present)."""
    directory = Path(directory)
    if not (directory / META).is_file():
        raise ArtefactError(f"{directory} is not a saved tailtune classifier (no {META})")
    meta = read_json(directory / META, "classifier metadata")
    if not isinstance(meta, dict) or not {"config", "labels", "backbone"} <= set(meta):
        raise ArtefactError(f"{directory / META} lacks config, labels or backbone; it is not a tailtune classifier "
                            f"file (or it was edited)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ArtefactError(f"{directory} was saved by a newer tailtune (format {meta['format_version']}); "
                            f"upgrade tailtune to load it")
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(y, str) for y in labels):
        raise ArtefactError(f"{directory / META}: labels must be a list of strings")
    meta.setdefault("artefact", "full")
    weights = directory / (FULL if meta["artefact"] == "full" else MODULE)
    if not weights.is_file():
        raise ArtefactError(f"{directory} is incomplete: {weights.name} is missing; save the model again")
    stamp = tensor_metadata(weights)
    if "tailtune_labels_sha256" in stamp and stamp["tailtune_labels_sha256"] != label_checksum(labels):
        raise ArtefactError(f"{directory / META}: the label order differs from the one {weights.name} was trained "
                            f"with (was the file edited?); restore the original label list")
    if "tailtune_save_id" in stamp and stamp["tailtune_save_id"] != meta.get("save_id"):
        raise ArtefactError(f"{directory}: {weights.name} and {META} come from different saves (an interrupted "
                            f"copy or save?); save the model again")
    return meta


def backbone_for(directory: str | Path, meta: dict, backbone: Any = None) -> Backbone:
    """The encoder a saved classifier goes onto: its own saved one (full fine-tuning), or the base
    backbone of a task module (``backbone``: a name, a path or a loaded ``Backbone``), checked by
    fingerprint."""
    directory = Path(directory)
    saved = meta["backbone"]
    if meta["artefact"] == "full":
        from transformers import AutoConfig, AutoModel
        with quiet_transformers():
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory / "backbone"))
        return Backbone(encoder, load_tokenizer(str(directory / "backbone")), saved["name"])
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone or saved["name"])
    found = fingerprint(bb.encoder, saved.get("fingerprint_version", 1))
    if found != saved["fingerprint"]:
        raise ArtefactError(
            f"{directory} is a task module for backbone {saved['name']!r} (fingerprint {saved['fingerprint']}), "
            f"but {bb.name!r} has fingerprint {found}: a different model. Load it onto the backbone it was "
            f"trained on (backbone=... / --backbone).")
    return bb


def load_weights(model: nn.Module, directory: str | Path, meta: dict, device: str | torch.device = "cpu") -> None:
    """Load a saved classifier's weights into a freshly built ``model``."""
    from safetensors.torch import load_model
    directory = Path(directory)
    if meta["artefact"] == "full":
        path = directory / FULL
        try:
            load_model(model, str(path), strict=True, device=str(device))
        except RuntimeError as e:
            raise ArtefactError(f"{path} does not match its {META} ({str(e).splitlines()[0]}); save the model "
                                f"again") from None
        _check_finite(model.state_dict(), str(path))
        return
    path = directory / MODULE
    tensors = load_tensors(path, str(device))
    _check_finite(tensors, str(path))
    state = {model.router.rename(k, model.task): v for k, v in tensors.items()}
    _, unexpected = model.load_state_dict(state, strict=False)
    absent = sorted(set(model.trainable_parameter_names()) - set(state))
    if unexpected or absent:
        raise ArtefactError(f"{path} does not match its {META}: missing {absent[:5]}, unexpected "
                            f"{unexpected[:5]}; save the model again")


# ---------------------------------------------------------------- pre-trained prompts (PPT)

def save_prompt(model: Any, directory: str | Path, extra: Mapping[str, Any] | None = None,
                overwrite: bool = True) -> Path:
    """Save a classifier's prepended soft tokens (and its verbalizer head's transform, which the
    prompt was trained with) as a pre-trained prompt: ``prompt.safetensors`` + ``prompt.json``."""
    from safetensors.torch import save_file


    n = model.config.options.get("soft_tokens", 0)
    if not n:
        raise ArtefactError("save_prompt: the classifier has no prepended soft tokens (soft_tokens=0)")
    tensors = {"soft_prompt": model.tuning.soft_prompt[:n].detach().cpu().contiguous()}
    head = dict(model.head.named_parameters())
    for name in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
        if name in head and head[name].requires_grad:
            tensors[f"head.{name}"] = head[name].detach().cpu().contiguous()
    meta = {"tailtune_version": __version__, "soft_tokens": n, "template": model.config.options.get("template"),
            "backbone": {"name": model.backbone_name, "fingerprint": model.fingerprint,
                         "fingerprint_version": FINGERPRINT_VERSION}, **(extra or {})}
    with staged_dir(directory, overwrite) as tmp:
        save_file(tensors, str(tmp / PROMPT_FILE))
        write_json(tmp / PROMPT_META, meta)
    return Path(directory)


def load_prompt(directory: str | Path, encoder: nn.Module, soft_tokens: int) -> tuple[dict, dict]:
    """The tensors and metadata of a pre-trained prompt, checked against the backbone and the
    number of prepended soft tokens."""
    directory = Path(directory)
    if not (directory / PROMPT_META).is_file():
        raise ArtefactError(f"{directory} is not a pre-trained prompt (no {PROMPT_META}); "
                            f"make one with `tailtune pretrain-prompt`")
    meta = read_json(directory / PROMPT_META, "prompt metadata")
    saved = meta["backbone"]
    if fingerprint(encoder, saved.get("fingerprint_version", 1)) != saved["fingerprint"]:
        raise ArtefactError(f"the prompt in {directory} was pre-trained on backbone {saved['name']!r} "
                            f"(fingerprint {saved['fingerprint']}), not on this one; use it with the backbone it "
                            f"was trained on")
    if meta["soft_tokens"] != soft_tokens:
        raise ArtefactError(f"the prompt in {directory} has {meta['soft_tokens']} soft tokens but the classifier "
                            f"prepends {soft_tokens}: set soft_tokens={meta['soft_tokens']}")
    return load_tensors(directory / PROMPT_FILE), meta


# ---------------------------------------------------------------- training checkpoints

CHECKPOINT_STATE = "state.json"


def save_checkpoint(directory: str | Path, tensors: Mapping[str, Mapping[str, torch.Tensor]], state: dict) -> None:
    """A resumable training state: one safetensors file per group of tensors (parameters,
    optimiser moments, best parameters, RNG states) and ``state.json``; replaced atomically."""
    from safetensors.torch import save_file
    with staged_dir(directory, overwrite=True) as tmp:
        for group, named in tensors.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in named.items()}, str(tmp / f"{group}.safetensors"))
        write_json(tmp / CHECKPOINT_STATE, state)


def load_checkpoint(directory: str | Path, groups: tuple[str, ...],
                    device: str = "cpu") -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
    """(tensor groups, state) of a checkpoint, or None when ``directory`` holds none."""
    directory = Path(directory)
    if not (directory / CHECKPOINT_STATE).is_file():
        return None
    state = read_json(directory / CHECKPOINT_STATE, "checkpoint state")
    tensors = {g: load_tensors(directory / f"{g}.safetensors", device) if (directory / f"{g}.safetensors").is_file()
               else {} for g in groups}
    return tensors, state
