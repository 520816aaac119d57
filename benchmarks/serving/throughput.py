"""Prediction throughput: `tailtune predict` against a Hugging Face `pipeline` on the same backbone,
texts, batch and length, in each precision, with the quality of each and the machine's matmul rate.

    python benchmarks/serving/throughput.py MODEL_DIR --data ../shared/data/longtail/r52/test.tsv \
        --limit 1024 --batch 64 --out benchmarks/results/serving/throughput.json

MODEL_DIR is a classifier trained on the data's labels. Speed is timed on the first ``--limit`` texts;
quality (macro-F1, accuracy) on every text of the file, since 1,024 texts hold too few of a long tail's
rare classes for a one-point comparison. The pipeline runs
`AutoModelForSequenceClassification` on the same backbone (its head is new: speed only). The classifier
is also exported (`tailtune export`) and run by ONNX Runtime in fp32 (``--no-onnx`` skips it), and run compiled
(`--compile`: torch.compile, fp32 and bf16; ``--no-compile`` skips it), whose first call, which compiles, is timed
apart (``first_call_seconds``; ``break_even_texts``: how many texts repay it). Timings:
best of ``--repeats`` runs, the same process, nothing else of this benchmark running beside them.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path


def matmul_gflops(dtype_name: str = "float32", device: str = "cpu", repeats: int = 5) -> float:
    import torch
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(getattr(torch, dtype_name))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ a
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def onednn_linear_gflops(repeats: int = 5) -> float:
    """fp32 rate of oneDNN's linear (the kernel compiled inference packs weights for): the best over MiniLM's three
    linear shapes at 8,192 tokens (attention 384->384, feed-forward 384->1536 and 1536->384)."""
    import torch
    best = 0.0
    for k, n in ((384, 384), (384, 1536), (1536, 384)):
        x, w = torch.randn(8192, k), torch.randn(n, k).to_mkldnn()
        run = lambda: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w, None).to_dense()  # noqa: E731
        run()
        best = max(best, 2 * 8192 * k * n / best_of(run, repeats) / 1e9)
    return best


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import torch
    import tailtune as tt
    from tailtune.metrics import long_tail_report
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--data", default="../shared/data/longtail/r52/test.tsv")
    p.add_argument("--limit", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime row (needs tailtune[onnx])")
    p.add_argument("--no-compile", action="store_true", help="skip the rows of compiled inference (--compile)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU table (int8 and ONNX Runtime: CPU only)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for PyTorch and ONNX Runtime alike (default: each library's own)")
    p.add_argument("--out", default="benchmarks/results/serving/throughput.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    full = tt.read_dataset(a.data)
    gpu = a.device.startswith("cuda")
    base = tt.TailtuneClassifier.load(a.model, a.device)
    base.train_config.eval_batch_size = a.batch
    length = base.model_.config.max_length
    full = full.subset([i for i, y in enumerate(full.labels) if y in set(base.labels_)])
    ds = full.subset(range(min(a.limit, len(full))))
    tokens = sum(len(e.input_ids) for e in base.model_.encode(ds.texts))
    rates = {"fp32": matmul_gflops("float32", a.device), "bf16": matmul_gflops("bfloat16", a.device)}
    if not gpu:  # PyTorch's CPU matmul is MKL's, below the machine's rate on some CPUs (e.g. AMD); oneDNN's beside it
        rates["fp32_onednn_linear"] = onednn_linear_gflops()
    flops_per_token = 2 * sum(p.numel() for n, p in base.model_.encoder.named_parameters() if "embeddings" not in n)
    rows = {}
    for precision in ("fp32", "bf16") if gpu else ("fp32", "bf16", "int8"):
        clf = tt.TailtuneClassifier.load(a.model, a.device).set_precision(precision)
        clf.train_config.eval_batch_size = a.batch
        seconds = best_of(lambda: clf.decision_function(ds.texts), a.repeats)
        report = long_tail_report(full.labels, clf.predict(full.texts))
        rows[f"tailtune {precision}"] = {"seconds": seconds, "tokens_per_second": tokens / seconds,
                                         "macro_f1": report["macro_f1"], "accuracy": report["accuracy"]}
    failed: dict[str, str] = {}  # rows that could not run here, and why
    for precision in () if a.no_compile else ("fp32", "bf16"):  # `--compile`: the first call compiles, timed apart
        torch._dynamo.reset()
        clf = tt.TailtuneClassifier.load(a.model, a.device).set_precision(precision)
        clf.train_config.eval_batch_size = a.batch
        start = time.perf_counter()
        try:  # (untried on a GPU, where inductor needs Triton: a failure is recorded, the other rows still run)
            clf.set_compile().decision_function(ds.texts)
        except Exception as e:  # noqa: BLE001
            failed[f"tailtune {precision} compiled"] = f"{type(e).__name__}: {e}"[:500]
            print(f"compiled {precision} failed: {type(e).__name__}: {e}"[:300], flush=True)
            continue
        first = time.perf_counter() - start
        seconds = best_of(lambda: clf.decision_function(ds.texts), a.repeats)
        report = long_tail_report(full.labels, clf.predict(full.texts))
        eager = rows[f"tailtune {precision}"]["seconds"]
        rows[f"tailtune {precision} compiled"] = {
            "seconds": seconds, "tokens_per_second": tokens / seconds, "macro_f1": report["macro_f1"],
            "accuracy": report["accuracy"], "first_call_seconds": first,
            "break_even_texts": (first - seconds) / max((eager - seconds) / len(ds), 1e-9)}
    if not a.no_onnx and not gpu:  # the same classifier exported (`tailtune export`) and run by ONNX Runtime, fp32
        import tempfile
        from tailtune.deploy import OnnxClassifier
        from tailtune.export import export_onnx
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx = OnnxClassifier(export_onnx(a.model, Path(tmp) / "onnx"), threads=a.threads)
            seconds = best_of(lambda: onnx.decision_function(ds.texts, batch_size=a.batch), a.repeats)
            report = long_tail_report(full.labels, onnx.predict(full.texts))
        rows["ONNX Runtime fp32"] = {"seconds": seconds, "tokens_per_second": tokens / seconds,
                                     "macro_f1": report["macro_f1"], "accuracy": report["accuracy"]}
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    path = tt.backbone.resolve_name(base.model_.backbone_name)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(base.labels_), dtype=dtype)
            pipe = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(path),
                            device=0 if gpu else -1, batch_size=a.batch, truncation=True, max_length=length)
        seconds = best_of(lambda: pipe(ds.texts), a.repeats)
        rows[f"HF pipeline {precision}"] = {"seconds": seconds, "tokens_per_second": tokens / seconds}
    for row in rows.values():
        row["share_of_fp32_matmul_rate"] = row["tokens_per_second"] * flops_per_token / (rates["fp32"] * 1e9)
        if "fp32_onednn_linear" in rates:  # against the faster of the two fp32 kernels
            best = max(rates["fp32"], rates["fp32_onednn_linear"])
            row["share_of_best_fp32_rate"] = row["tokens_per_second"] * flops_per_token / (best * 1e9)
    ref = rows["HF pipeline fp32"]["tokens_per_second"]
    for name, row in rows.items():
        row["vs_pipeline_fp32"] = row["tokens_per_second"] / ref
        print(f"{name:<22} {row['tokens_per_second']:>9.0f} tokens/s  {row['vs_pipeline_fp32']:.2f}x"
              + (f"  macro-F1 {row['macro_f1']:.4f}" if "macro_f1" in row else ""), flush=True)
    out = {"setup": {"model": a.model, "data": a.data, "texts": len(ds), "quality_texts": len(full), "tokens": tokens,
                     "batch": a.batch, "max_length": length, "threads": torch.get_num_threads(),
                     "device": torch.cuda.get_device_name(0) if gpu else "cpu",
                     "matmul_gflops": rates, "encoder_flops_per_token": flops_per_token}, "results": rows,
           **({"failed": failed} if failed else {})}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
