"""What the default's logit adjustment and ``--test-prior em`` do when the test set is, or is not, distributed as the
training set, on the very same trained classifiers.

    python benchmarks/peers/posthoc.py --only sst5-lt trec50 --seeds 13 21 42 --out /tmp/ph.jsonl --save-scores /tmp/s
    python benchmarks/peers/prior_shift.py /tmp/s

``posthoc.py --save-scores`` keeps each run's raw dev and test scores (the ``auto`` recipe, trained as in
``quality.py``). This script then scores the test set four ways: unadjusted (τ = 0); the default (τ chosen on dev by
the one-standard-error rule); τ = 1 (the balanced-error rule); and ``--test-prior em`` (``tailtune.priorshift``:
temperature and prior fitted on dev, the test shares estimated by EM from the test texts). Each is measured on the
test set as it is and on the test set re-weighted to equal class totals (every example weighted by 1 / its class's test
count), which stands in for a class-balanced test set drawn from the same texts; EM sees the same weights. Rows go to
``benchmarks/results/quality/prior_shift.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import by_dataset, dev_carved, read_jsonl  # noqa: E402
from tailtune.objectives import LogitAdjust  # noqa: E402
from tailtune.priorshift import adapt, fit_state  # noqa: E402

RULES = ("τ=0", "τ from dev macro-F1", "τ=1", "τ for a balanced target", "--test-prior em", "default")


def macro_f1(gold: torch.Tensor, scores: torch.Tensor, weight: torch.Tensor | None = None,
             own_classes: bool = False) -> float:
    """scikit-learn's macro-F1 (over the classes in gold or predictions), or over the test set's own classes only
    (``own_classes``: a predicted class the test set lacks then costs only the recall of the texts it took)."""
    return float(f1_score(gold.tolist(), scores.argmax(-1).tolist(), average="macro", zero_division=0,
                          labels=sorted(set(gold.tolist())) if own_classes else None,
                          sample_weight=None if weight is None else weight.tolist()))


def fitted_tau(target: str, log_prior: torch.Tensor, dev_raw: torch.Tensor, dev_gold: list[int]) -> float:
    """The τ that `--adjust-tau-from-dev --adjust-target TARGET` fits on these dev scores (the library's own rule)."""
    return LogitAdjust(log_prior, 0.0, True, target).fit(dev_raw, dev_gold)[0]["adjust_tau"]


def run(path: Path, data_dir: Path) -> dict:
    from safetensors import safe_open
    from tailtune.metrics import long_tail_report
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    name, seed = path.stem.rsplit("-", 1)
    is_carved = dev_carved(data_dir, name)
    log_prior, dev_raw, dev_gold = t["log_prior"], t["dev_scores"], t["dev_gold"].tolist()
    keep = t["test_gold"] >= 0
    raw, gold = t["test_scores"][keep], t["test_gold"][keep]
    tau_dev = fitted_tau("dev", log_prior, dev_raw, dev_gold)
    tau_bal = fitted_tau("balanced", log_prior, dev_raw, dev_gold)
    tau = tau_bal if is_carved else tau_dev  # what `--adjust-target auto` (the default) takes
    state = fit_state(dev_raw, dev_gold)
    counts = torch.bincount(gold, minlength=raw.shape[1]).float()
    # the recipe that trained the scores: posthoc.py trains today's default and names it in the file; a file saved
    # before it did is read as today's default's too (relabel its rows if the default has changed since)
    row = {"dataset": name, "seed": int(seed), "method": meta.get("method", "auto"), "dev_carved": is_carved,
           "tau_dev": tau_dev, "tau_balanced": tau_bal, "temperature": state["temperature"], "n_test": len(gold),
           "test_classes": int((counts > 0).sum()), "classes": raw.shape[1]}
    shifted = {"τ=0": raw, "τ from dev macro-F1": raw - tau_dev * log_prior, "τ=1": raw - log_prior,
               "τ for a balanced target": raw - tau_bal * log_prior, "default": raw - tau * log_prior}
    # how many classes the test set lacks each rule predicts (each enters scikit-learn's macro-F1 with F1 0)
    row["absent_predicted"] = {k: len(set(v.argmax(-1).tolist()) - set(gold.tolist())) for k, v in shifted.items()}
    for split, weight in (("as-is", torch.ones(len(gold))), ("balanced", 1 / counts[gold])):
        row[f"{split}, own classes"] = {k: macro_f1(gold, v, weight, own_classes=True) for k, v in shifted.items()}
        row[split] = {**{k: macro_f1(gold, v, weight) for k, v in shifted.items()},
                      "--test-prior em": macro_f1(gold, adapt(raw, state, weight)[0], weight)}
    # the default's full report on the test set as it is (tail-F1 and the rest, as quality.py reports)
    counts_by_label = {str(i): int(n) for i, n in enumerate(t["train_counts"].tolist())}
    report = long_tail_report([str(i) for i in gold.tolist()],
                              [str(i) for i in shifted["default"].argmax(-1).tolist()], float(meta["theta"]),
                              counts_by_label)
    row["default_tau"] = tau
    row["default_report"] = {k: report[k] for k in ("accuracy", "macro_f1", "head_f1", "tail_f1")}
    row["train_seconds"] = float(meta["train_seconds"])
    return row


SPLITS = {"as-is": "as it is", "balanced": "re-weighted to balanced", "as-is, own classes": "as it is, its classes",
          "balanced, own classes": "re-weighted, its classes"}


def summary(rows: list[dict]) -> None:
    by_set = by_dataset(rows)
    print("| set | seeds | dev | test | " + " | ".join(RULES) + " |")
    print("|---|---|---|---|" + "---|" * len(RULES))
    for split, words in SPLITS.items():
        for name, rs in by_set.items():
            if not all(split in r for r in rs):  # rows written before the own-classes views
                continue
            cells = [f"{100 * statistics.mean(r[split][k] for r in rs):.1f}" if k in rs[0][split] else "–"
                     for k in RULES]
            dev = "carved" if rs[0]["dev_carved"] else "given"
            print(f"| {name} | {len(rs)} | {dev} | {words} | " + " | ".join(cells) + " |")
    have = {name: rs for name, rs in by_set.items() if all("absent_predicted" in r for r in rs)}
    if have:
        print("\nClasses the test set lacks that each rule predicts (mean over seeds; each counts as F1 0 in "
              "scikit-learn's macro-F1):\n")
        for name, rs in have.items():
            print(f"- {name} ({rs[0]['test_classes']} of {rs[0]['classes']} classes in the test set): " + ", ".join(
                f"{k} {statistics.mean(r['absent_predicted'][k] for r in rs):.1f}" for k in rs[0]["absent_predicted"]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scores", nargs="?", help="the --save-scores folder of posthoc.py")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "quality" / "prior_shift.jsonl"))
    p.add_argument("--data-dir", default="../shared/data", help="where the sets are (to tell carved dev sets)")
    p.add_argument("--summary", action="store_true", help="print the table of the results file and stop")
    a = p.parse_args()
    out = Path(a.out)
    if not a.summary:
        if not a.scores:
            p.error("give the --save-scores folder of posthoc.py, or --summary")
        done = {(r["dataset"], r["seed"]) for r in read_jsonl(out) if r["method"] == "auto"}  # today's default's
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as f:
            for path in sorted(Path(a.scores).glob("*.safetensors")):
                name, seed = path.stem.rsplit("-", 1)
                if (name, int(seed)) not in done:
                    f.write(json.dumps(run(path, Path(a.data_dir)), ensure_ascii=False) + "\n")
    summary(read_jsonl(out))


if __name__ == "__main__":
    main()
