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
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        fmt = model.config.of("input_format")
        write_json(tmp / "export.json", {
            "format": EXPORT_FORMAT, "tailtune_version": __version__, "labels": model.labels, "inputs": names,
            "input_format": model.config.input_format, "max_length": model.config.max_length,
            "template": getattr(fmt, "full_template", None), "preset": meta.get("preset"),
            "backbone": meta["backbone"]["name"], "source": str(directory),
            **({"early_exit": "not in the graph: it answers at full depth, through the last layer's classifier"}
               if model.head.layers == "all" else {})})
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
        log("early exit is not exported: ONNX Runtime answers at full depth, through the last layer's classifier "
            "(`tailtune predict --early-exit` and `tailtune serve --early-exit` leave early)")
