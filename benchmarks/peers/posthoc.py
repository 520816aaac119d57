"""Post-hoc logit adjustment on the default, measured on the very same trained classifiers.

    python benchmarks/peers/posthoc.py --only trec50 sst5-lt --seeds 13 21 42
    python benchmarks/peers/posthoc.py --summary

Each run trains today's ``auto`` exactly as ``quality.py`` does (same splits, seed and recipe; ``--calibration
none`` during training, so τ = 0 is the unadjusted classifier, and prior_shift.py's ``default`` column, re-scored from
``--save-scores``, reproduces quality.py's ``auto`` row), then scores the dev and test sets
once, uncalibrated, and re-scores them with the class scores minus τ·log(training class prior) for every τ
of the grid (Menon et al., 2021: τ = 1 is the Bayes-consistent rule for the balanced error). A uniform prior
makes every τ a no-op, so only sets with an imbalanced training split are worth running. Rows go to
``benchmarks/results/quality/posthoc.jsonl``: per τ, test and dev macro-F1 and tail-F1, with ``method`` naming the
recipe that trained them (``auto``; rows of an earlier default are relabelled with its name, e.g. ``auto-prev``, when
the default changes, as quality.py's rows are).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import HELDOUT, LONGTAIL, auto_classifier, by_dataset, fit_timed, load, read_jsonl  # noqa: E402
from tailtune.objectives import ADJUST_TAUS, smallest_within_one_se  # noqa: E402  (`--adjust-tau-from-dev`'s rule)

TAUS = ADJUST_TAUS


def raw_scores(clf, ds):
    """The uncalibrated class scores of a labelled set, one scoring pass."""
    from tailtune.training import predict_logits
    return predict_logits(clf.model_, clf.model_.encode(ds.texts, ds.texts_b), clf.train_config.eval_batch_size,
                          calibrated=False)


def sweep(clf, ds, theta: float, prior, logits=None) -> dict:
    """{τ: (macro-F1, tail-F1)} of one labelled set, from one uncalibrated scoring pass."""
    from tailtune.metrics import long_tail_report
    if not len(ds):
        return {}
    logits = raw_scores(clf, ds) if logits is None else logits
    out = {}
    for tau in TAUS:
        pred = [clf.labels_[i] for i in (logits - tau * prior).argmax(-1).tolist()]
        rep = long_tail_report(ds.labels, pred, theta, clf.class_stats_.get("counts"))
        out[str(tau)] = (rep["macro_f1"], rep["tail_f1"])
    return out


def run(data_dir: Path, name: str, seed: int, save_scores: Path | None = None) -> dict:
    import torch
    train, dev, test, max_length, theta, _ = load(data_dir, name, seed)
    clf = auto_classifier(seed, max_length, theta)
    seconds = fit_timed(clf, train, dev)
    counts = clf.class_stats_["counts"]
    n = torch.tensor([float(counts[y]) for y in clf.labels_])
    prior = (n / n.sum()).log()
    scores = {part: raw_scores(clf, ds) for part, ds in (("dev", dev), ("test", test)) if len(ds)}
    if save_scores is not None:  # raw scores, gold indices and prior: post-hoc rules are re-scored without training
        from safetensors.torch import save_file
        index = {y: i for i, y in enumerate(clf.labels_)}
        tensors = {"log_prior": prior.contiguous(), "train_counts": n.long()}
        for part, ds in (("dev", dev), ("test", test)):
            if part in scores:
                tensors[f"{part}_scores"] = scores[part].float().contiguous()
                tensors[f"{part}_gold"] = torch.tensor([index.get(y, -1) for y in ds.labels])
        save_scores.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(save_scores / f"{name}-{seed}.safetensors"),
                  metadata={"train_seconds": str(seconds), "theta": str(theta), "method": "auto"})
    return {"dataset": name, "method": "auto", "seed": seed, "train_seconds": seconds,
            "imbalance": max(counts.values()) / min(counts.values()), "n_train": len(train), "n_dev": len(dev),
            "n_test": len(test), "torch_threads": torch.get_num_threads(),
            "test": sweep(clf, test, theta, prior, scores.get("test")),
            "dev": sweep(clf, dev, theta, prior, scores.get("dev"))}


def picked(row: dict) -> float:
    """The τ that `--adjust-tau-from-dev` picks for a run (``smallest_within_one_se`` on its dev macro-F1 by τ; 0
    without a dev set)."""
    if not row["dev"]:
        return 0.0
    return smallest_within_one_se({t: row["dev"][str(t)][0] for t in ADJUST_TAUS}, row["n_dev"])[0]


def summary(rows: list[dict]) -> None:
    """Per set: mean test macro-F1 at every τ, and at the τ that `--adjust-tau-from-dev` chooses on dev."""
    by_set = by_dataset(rows)
    print("| set | seeds | imbalance | " + " | ".join(f"τ={t:g}" for t in TAUS) + " | τ from dev |")
    print("|---|---|---|" + "---|" * (len(TAUS) + 1))
    for name, rs in by_set.items():
        cells = [f"{100 * statistics.mean(r['test'][str(t)][0] for r in rs):.1f}" for t in TAUS]
        chosen = [(r["test"][str(picked(r))][0], picked(r)) for r in rs]
        taus = ", ".join(f"{t:g}" for _, t in chosen)
        print(f"| {name} | {len(rs)} | {statistics.mean(r['imbalance'] for r in rs):.0f} | " + " | ".join(cells)
              + f" | {100 * statistics.mean(f for f, _ in chosen):.1f} (τ {taus}) |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "quality" / "posthoc.jsonl"))
    # (every set with an imbalanced training split: a uniform prior makes every τ a no-op, so the balanced
    # sst2-full / sst5-full, the slowest of HELDOUT, are left out unless named)
    p.add_argument("--only", nargs="*", default=[*LONGTAIL, *(n for n, spec in HELDOUT.items() if spec.ratio > 1)])
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42])
    p.add_argument("--summary", action="store_true", help="print the table of the results file and stop")
    p.add_argument("--save-scores", type=Path, default=None,
                   help="also write each run's raw dev/test scores, gold indices and log prior (safetensors) here")
    a = p.parse_args()
    out = Path(a.out)
    if a.summary:
        summary(read_jsonl(out))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["dataset"], r["seed"]) for r in read_jsonl(out) if r["method"] == "auto"}  # (not an earlier default's)
    for name in a.only:
        for seed in a.seeds:
            if (name, seed) in done:
                continue
            print(f"{name} seed {seed}", flush=True)
            row = run(Path(a.data_dir), name, seed, a.save_scores)
            print("    test macro-F1 by τ: " + " ".join(f"{t}:{100 * v[0]:.1f}" for t, v in row["test"].items())
                  + f" ({row['train_seconds']:.0f} s)", flush=True)
            from tailtune.artefacts import jsonable
            from tailtune.experiment import append_line
            append_line(out, json.dumps(jsonable(row)))


if __name__ == "__main__":
    main()
