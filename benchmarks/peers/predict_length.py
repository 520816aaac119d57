"""Reading more of each text at prediction: `auto` trained under the CPU protocol's length (R52: 48 tokens, which
cuts most Reuters articles after their first sentence), then scored on dev and test at longer prediction lengths
(`tailtune evaluate --max-length N`, ``TailtuneClassifier.set_max_length``); beside it the balanced logistic
regression on frozen embeddings, which reads the same number of tokens for training and test (cheap for it).

    python benchmarks/peers/predict_length.py --only r52 --seeds 13 21 42 --keep /tmp/r52-models
    python benchmarks/peers/predict_length.py --summary
    python benchmarks/peers/predict_length.py --only r52 --seeds 13 --method auto-b16 --no-peers   # a variant of `auto`

One JSON line per (set, method, seed, length) in ``benchmarks/results/quality/predict_length.jsonl``. With ``--keep
DIR`` each trained classifier is saved there and a later run scores the saved one instead of training again (its
``train_seconds`` are the saved training's). The logistic regression does not depend on the seed on sets with a given
dev split (R52), so there it runs for the first seed only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import AUTO_VARIANTS, LONGTAIL, auto_classifier, dev_carved, fit_timed, load, read_jsonl  # noqa: E402

LENGTHS = (48, 64, 96, 128, 192, 256)
OUT = Path("benchmarks/results/quality/predict_length.jsonl")


def trained_auto(name: str, seed: int, data_dir: Path, keep: Path | None, method: str = "auto"):
    """(classifier, training seconds, set splits): `auto` (or a variant of it) as the peer benchmark trains it, or
    the one kept."""
    import tailtune as tt
    train, dev, test, max_length, theta, _ = load(data_dir, name, seed)
    where = keep / (f"{name}-{seed}" if method == "auto" else f"{name}-{seed}-{method}") if keep else None
    if where is not None and (where / "tailtune.json").is_file():
        clf = tt.TailtuneClassifier.load(where, device="cpu")
        return clf, clf.saved_train_result_["seconds"], (train, dev, test, max_length, theta)
    clf = auto_classifier(seed, max_length, theta, method)
    seconds = fit_timed(clf, train, dev)
    if where is not None:
        clf.save(where, overwrite=True)
    return clf, seconds, (train, dev, test, max_length, theta)


def emit(row: dict, out: Path) -> None:
    """Print a result row and append it to the results file."""
    print(json.dumps(row), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def run(name: str, seed: int, data_dir: Path, keep: Path | None, peers: bool, out: Path, method: str = "auto") -> None:
    clf, seconds, (train, dev, test, max_length, theta) = trained_auto(name, seed, data_dir, keep, method)
    for n in LENGTHS:
        clf.set_max_length(n)
        t0 = time.perf_counter()
        report = clf.evaluate(test)
        predict_seconds = time.perf_counter() - t0
        dev_report = clf.evaluate(dev)
        row = {"dataset": name, "method": method, "seed": seed, "train_length": max_length, "predict_length": n,
               "macro_f1": report["macro_f1"], "tail_f1": report["tail_f1"], "accuracy": report["accuracy"],
               "dev_macro_f1": dev_report["macro_f1"], "n_dev": len(dev), "train_seconds": seconds,
               "test_predict_seconds": predict_seconds}
        emit(row, out)
    if not peers:
        return
    from peers import PEERS
    from tailtune.metrics import long_tail_report
    for n in LENGTHS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = PEERS["lr-balanced"](train, dev, test, seed, n, None, False)
        report = long_tail_report(test.labels, res["predictions"], theta, dict(Counter(train.labels)))
        row = {"dataset": name, "method": "lr-balanced", "seed": seed, "train_length": n, "predict_length": n,
               "macro_f1": report["macro_f1"], "tail_f1": report["tail_f1"], "accuracy": report["accuracy"],
               "train_seconds": res["train_seconds"]}
        emit(row, out)


def summary(out: Path) -> None:
    """Mean test (and dev) macro-F1 per method and prediction length, over the seeds in the file."""
    rows = read_jsonl(out)
    for name in sorted({r["dataset"] for r in rows}):
        print(f"{name}: test macro-F1 (dev macro-F1) by prediction length, mean over seeds")
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == name):
            cells = []
            for n in LENGTHS:
                rs = [r for r in rows if r["dataset"] == name and r["method"] == method and r["predict_length"] == n]
                if not rs:
                    continue
                cell = f"{n}: {100 * statistics.mean(r['macro_f1'] for r in rs):.1f}"
                if "dev_macro_f1" in rs[0]:
                    cell += f" ({100 * statistics.mean(r['dev_macro_f1'] for r in rs):.1f})"
                cells.append(cell)
            seeds = sorted({r["seed"] for r in rows if r["dataset"] == name and r["method"] == method})
            print(f"  {method} (seeds {', '.join(map(str, seeds))}): " + " | ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--only", nargs="*", default=["r52"])
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42])
    p.add_argument("--keep", type=Path, default=None, help="save each trained classifier here (and reuse it)")
    p.add_argument("--no-peers", action="store_true", help="only tailtune's rows")
    p.add_argument("--method", default="auto", choices=sorted(AUTO_VARIANTS),
                   help="`auto` or one of the peer benchmark's variants of it (e.g. auto-b16)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--summary", action="store_true", help="print the table of the results file and stop")
    args = p.parse_args()
    if args.summary:
        return summary(args.out)
    for name in args.only:
        fixed_split = name in LONGTAIL and not dev_carved(Path(args.data_dir), name)  # the same training split
        for k, seed in enumerate(args.seeds):
            run(name, seed, Path(args.data_dir), args.keep, not args.no_peers and not (fixed_split and k), args.out,
                args.method)


if __name__ == "__main__":
    main()
