"""Export a saved classifier to ONNX (``tailtune export``), for ``tailtune.deploy`` / ONNX Runtime.

The graph maps token ids, attention mask, read position (and segment ids, soft-token positions
where the classifier uses them) to calibrated class scores; batch size and sequence length are
dynamic. Tokenising stays outside the graph: the export directory carries the tokenizer and an
``export.json`` with the labels and the input format, and ``tailtune.deploy.OnnxClassifier``
encodes texts exactly as training did, without PyTorch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artefacts import read_classifier, staged_dir, write_json
from .errors import ConfigError
from .version import __version__

EXPORT_FORMAT = 1


class _Graph(nn.Module):
    """The classifier as one function of tensors (what ONNX records)."""

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.names, tensors))
        return self.model.calibrate(self.model(**batch).float())


class _Embeddings(nn.Module):
    """Early exit, first graph: token ids (and segment ids, soft-token positions) -> the embeddings' output."""

    def __init__(self, model: Any, names: list[str]) -> None:
        super().__init__()
        from .early_exit import _encoder_parts
        self.model, self.names, self.embeddings = model, names, _encoder_parts(model.encoder)[0]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        from .tuning.routing import Route
        batch = dict(zip(self.names, tensors))
        kwargs = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        with self.model.router.route([Route(self.model.task, None, batch.get("soft_positions"))]):
            return self.embeddings(input_ids=batch["input_ids"], **kwargs)


class _Layer(nn.Module):
    """Early exit, one graph per layer: (hidden states, mask, read position) -> (the layer's hidden states, its
    exit classifier's calibrated scores)."""

    def __init__(self, model: Any, k: int) -> None:
        super().__init__()
        from .early_exit import _encoder_parts
        self.model, self.k, self.layer = model, k, _encoder_parts(model.encoder)[1][k]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask
        from .tuning.routing import Route
        mask = create_bidirectional_mask(config=self.model.encoder.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        with self.model.router.route([Route(self.model.task, None, None)]):
            hidden = self.layer(hidden, mask)
            x, _ = self.model.readout(hidden, attention_mask, position)
        return hidden, self.model.calibrate(self.model.head.exits[self.k](x).float())


def _export_exits(model: Any, batch: dict, names: list[str], folder: Path, opset: int) -> dict:
    """The embeddings and every layer with its exit classifier as graphs of their own (``exits/``), so that
    ``OnnxClassifier.set_early_exit`` runs layer by layer and rows leave as in ``tailtune predict --early-exit``."""
    folder.mkdir()
    seq = {0: "batch", 1: "seq"}
    names = [n for n in names if n in ("input_ids", "token_type_ids", "soft_positions")]
    torch.onnx.export(_Embeddings(model, names), tuple(batch[n] for n in names), str(folder / "embeddings.onnx"),
                      input_names=names, output_names=["hidden"], opset_version=opset, dynamo=False,
                      dynamic_axes={**{n: ({0: "batch", 1: "soft"} if n == "soft_positions" else seq) for n in names},
                                    "hidden": seq})
    with torch.no_grad():
        hidden = _Embeddings(model, names)(*(batch[n] for n in names))
    head = model.head
    for k in range(len(head.exits)):
        layer = _Layer(model, k)
        torch.onnx.export(layer, (hidden, batch["attention_mask"], batch["position"]), str(folder / f"layer{k + 1}.onnx"),
                          input_names=["hidden", "attention_mask", "position"], output_names=["hidden_out", "scores"],
                          dynamic_axes={"hidden": seq, "attention_mask": seq, "position": {0: "batch"},
                                        "hidden_out": seq, "scores": {0: "batch"}},
                          opset_version=opset, dynamo=False)
        with torch.no_grad():
            hidden = layer(hidden, batch["attention_mask"], batch["position"])[0]
    return {"layers": len(head.exits), "rule": head.rule, "threshold": head.threshold, "patience": head.patience}


def require_onnx(modules: tuple[str, ...]) -> None:
    """A clear error, before any work, when the ONNX packages are missing."""
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export and inference need {', '.join(missing)}: pip install 'tailtune[onnx]' "
                          f"(or pip install {' '.join(missing)})")


def export_onnx(directory: str | Path, output: str | Path, opset: int = 17, overwrite: bool = False,
                backbone: str | None = None) -> Path:
    """Write ``model.onnx``, ``export.json`` and the tokenizer of a saved classifier into ``output``."""
    require_onnx(("onnx", "onnxscript", "onnxruntime"))
    from .model import Classifier
    from .batch import collate
    meta = read_classifier(directory)
    model = Classifier.load(directory, "cpu", backbone).eval()
    from .tuning.lora import merge_lora
    merge_lora(model.router, model.task)  # LoRA: W + (α/r)·B·A folded into W, plain linear layers in the graph
    if model.input_format.resamples:
        raise ConfigError(f"{directory} appends demonstrations from its training pool to every input, which the "
                          f"ONNX runtime's tokenisation does not do; serve it with `tailtune serve` or predict "
                          f"with `tailtune predict`")
    example = model.encode(["a short example text", "a second, somewhat longer example text for the export"],
                           ["second text"] * 2 if _uses_pairs(model) else None)
    batch = collate(example, model.tokenizer.pad_token_id, torch.device("cpu"))
    names = [n for n in ("input_ids", "attention_mask", "position", "token_type_ids", "soft_positions") if n in batch]
    dynamic = {n: ({0: "batch"} if n == "position" else {0: "batch", 1: ("soft" if n == "soft_positions" else "seq")})
               for n in names}
    with staged_dir(output, overwrite) as tmp:
        torch.onnx.export(_Graph(model, names), tuple(batch[n] for n in names), str(tmp / "model.onnx"),
                          input_names=names, output_names=["scores"], dynamic_axes={**dynamic, "scores": {0: "batch"}},
                          opset_version=opset, dynamo=False)
        exits = _export_exits(model, batch, names, tmp / "exits", opset) if model.head.layers == "all" else None
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        fmt = model.config.of("input_format")
        write_json(tmp / "export.json", {
            "format": EXPORT_FORMAT, "tailtune_version": __version__, "labels": model.labels, "inputs": names,
            "input_format": model.config.input_format, "max_length": model.config.max_length,
            "template": getattr(fmt, "full_template", None), "preset": meta.get("preset"),
            "backbone": meta["backbone"]["name"], "source": str(directory),
            **({"early_exit": exits} if exits else {})})
    return Path(output)


def _uses_pairs(model: Any) -> bool:
    template = getattr(model.input_format, "template", None)
    return bool(template is not None and template.uses_text_b)


def check_export(directory: str | Path, output: str | Path, texts: list[str]) -> float:
    """Largest absolute difference between ONNX Runtime's and PyTorch's scores on ``texts``."""
    from .api import TailtuneClassifier
    from .deploy import OnnxClassifier
    ours = TailtuneClassifier.load(directory, "cpu").decision_function(texts)
    onnx = OnnxClassifier(output).decision_function(texts)
    return float(abs(ours - onnx).max())


def main_export(directory: str, output: str, opset: int = 17, overwrite: bool = False, log: Any = print) -> None:
    out = export_onnx(directory, output, opset, overwrite)
    info = json.loads((out / "export.json").read_text())
    diff = check_export(directory, out, ["a short check", "another sentence to compare the two runtimes on"])
    log(f"exported {directory} to {out / 'model.onnx'} ({len(info['labels'])} labels); ONNX Runtime vs PyTorch: "
        f"largest score difference {diff:.2e}")
    if "early_exit" in info:
        log(f"early exit: model.onnx answers at full depth; exits/ holds the embeddings and each of the "
            f"{info['early_exit']['layers']} layers with its exit classifier, for OnnxClassifier.set_early_exit()")
