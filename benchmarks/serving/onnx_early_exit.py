"""Early exit without PyTorch: ONNX Runtime's layer-by-layer graphs (``tailtune export`` -> ``exits/``) against
PyTorch's early exit and both runtimes at full depth, on one saved early-exit classifier and one labelled file.

Both runtimes get one thread and the same texts, batch and thresholds; each timing is the best of ``--repeats``,
the two runtimes one after the other at full depth and then at each threshold. Quality:
macro-F1 of each path, and how many rows ONNX Runtime sends out at another layer or with another label than
PyTorch does (0 expected).

    tailtune train --train train.tsv --dev dev.tsv --preset pabee --output runs/ee
    python benchmarks/serving/onnx_early_exit.py runs/ee --data test.tsv --thresholds 0.15 0.3 \\
        --out benchmarks/results/serving/onnx_early_exit.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import numpy as np
    import torch

    import tailtune as tt
    from tailtune.deploy import OnnxClassifier
    from tailtune.export import export_onnx
    from tailtune.metrics import long_tail_report
    from throughput import best_of  # this folder's timing helper
    p = argparse.ArgumentParser()
    p.add_argument("model", help="a saved classifier trained with head='early-exit' (e.g. --preset pabee)")
    p.add_argument("--data", required=True, help="labelled texts (.tsv/.csv/.jsonl)")
    p.add_argument("--rule", default="normalized-entropy")
    p.add_argument("--thresholds", nargs="*", type=float, default=[0.15, 0.3])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/serving/onnx_early_exit.json")
    p.add_argument("--note", default=None, help="what else ran beside this run (stored with its results)")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = tt.read_dataset(a.data)
    texts, gold = data.texts, data.labels
    ours = tt.TailtuneClassifier.load(a.model, "cpu")
    ours.train_config = dataclasses.replace(ours.train_config, eval_batch_size=a.batch)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(a.model, Path(tmp) / "onnx")
        onnx = OnnxClassifier(Path(tmp) / "onnx", threads=1)
        labels = ours.labels_

        def f1(scores) -> float:
            pred = [labels[i] for i in np.asarray(scores).argmax(-1)]
            return long_tail_report(gold, pred)["macro_f1"]

        def timed(clf, exit_rule):  # (full depth first: neither classifier has an early-exit switch to turn off)
            if exit_rule is not None:
                clf.set_early_exit(*exit_rule)
            kw = {} if clf is ours else {"batch_size": a.batch}
            seconds = best_of(lambda: clf.decision_function(texts, **kw), a.repeats)
            scores = np.asarray(clf.decision_function(texts, **kw))
            used = getattr(clf, "layers_used_", None)
            return seconds, scores, None if used is None or exit_rule is None else np.asarray(used)

        full_pt, scores_pt, _ = timed(ours, None)
        full_ort, scores_ort, _ = timed(onnx, None)
        rows = [{"path": "full depth", "pytorch_seconds": full_pt, "onnx_seconds": full_ort,
                 "pytorch_macro_f1": f1(scores_pt), "onnx_macro_f1": f1(scores_ort), "mean_layers": None,
                 "max_score_difference": float(np.abs(scores_pt - scores_ort).max())}]
        print(f"full depth: PyTorch {full_pt:.2f} s, ONNX Runtime {full_ort:.2f} s "
              f"({full_pt / full_ort:.2f}x); macro-F1 {rows[0]['pytorch_macro_f1']:.4f}", flush=True)
        for threshold in a.thresholds:
            rule = (a.rule, threshold, None)
            t_pt, s_pt, used_pt = timed(ours, rule)
            t_ort, s_ort, used_ort = timed(onnx, rule)
            row = {"path": f"{a.rule} < {threshold}", "pytorch_seconds": t_pt, "onnx_seconds": t_ort,
                   "pytorch_macro_f1": f1(s_pt), "onnx_macro_f1": f1(s_ort), "mean_layers": float(used_ort.mean()),
                   "rows_at_another_layer": int((used_pt != used_ort).sum()),
                   "rows_with_another_label": int((s_pt.argmax(-1) != s_ort.argmax(-1)).sum()),
                   "max_score_difference": float(np.abs(s_pt - s_ort).max()),
                   "onnx_speedup_over_onnx_full_depth": full_ort / t_ort,
                   "onnx_speedup_over_pytorch_full_depth": full_pt / t_ort}
            rows.append(row)
            print(f"{row['path']}: {row['mean_layers']:.2f} layers; PyTorch {t_pt:.2f} s, ONNX Runtime {t_ort:.2f} s "
                  f"({full_ort / t_ort:.2f}x ONNX full depth, {full_pt / t_ort:.2f}x PyTorch full depth); macro-F1 "
                  f"{row['onnx_macro_f1']:.4f}; {row['rows_at_another_layer']} rows at another layer, "
                  f"{row['rows_with_another_label']} with another label", flush=True)
    out = {"model": a.model, "data": a.data, "texts": len(texts), "batch": a.batch, "threads": 1,
           "repeats": a.repeats, "note": a.note, "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
