"""Which dev rule picks the best checkpoint? One training per (set, method, seed), every evaluation scored twice.

    python benchmarks/peers/selection.py --only r52 --methods auto --seeds 13 21 42
    python benchmarks/peers/selection.py --summary

Each run trains `auto` (or one of quality.py's variants of it) as ``quality.py`` does, on the same splits, seed
and recipe, but never stops early: every evaluation of the recipe's full schedule is kept. After each evaluation
the classifier scores dev and test, uncalibrated: the scores as trained, before the post-hoc logit adjustment
(R52's given dev set keeps τ = 0 there; on TREC-50, whose dev set `auto` carves itself when quality.py runs it, the
peer table's figure also has the adjustment for a balanced test set, so it differs from these): dev macro-F1
(what `auto` keeps today), dev accuracy and dev log-loss, and test macro-F1 and tail-F1. Then the same after the
default's post-hoc logit adjustment, its τ fitted on that evaluation's dev scores as `auto` fits it on the kept
step's after training (for a balanced test set where the set's dev split is carved from imbalanced training data,
as on TREC-50 and the held-out long tails): ``tau``, ``dev_adjusted_*`` and ``test_adjusted_*``; with them the
summary's second table is what `auto` would predict under each rule. No rule sees the test figures; they only say
afterwards what each rule's choice was worth. The training is the same as without the
extra scoring (prediction neither draws random numbers nor leaves the model in eval mode), so the rule "best dev
macro-F1, all epochs" reproduces quality.py's `auto-nostop` row of the same seed.
Rows -> ``benchmarks/results/quality/selection.jsonl``.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import AUTO_TRAIN, AUTO_VARIANTS, dev_carved, fit_timed, load, read_jsonl  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "results" / "quality" / "selection.jsonl"


def _scores(model, ds, theta: float, counts: dict, logits=None) -> tuple:
    """(the split's scores, its class scores): ``logits`` given (e.g. adjusted), else the raw scores as trained."""
    import torch
    import torch.nn.functional as F
    from tailtune.metrics import long_tail_report
    from tailtune.training import predict_logits
    if logits is None:
        logits = predict_logits(model, model.encode(ds.texts, ds.texts_b), 128, calibrated=False)
    gold = torch.tensor([model.labels.index(y) for y in ds.labels])
    rep = long_tail_report(ds.labels, [model.labels[i] for i in logits.argmax(-1).tolist()], theta, counts)
    # macro-F1 over the split's own classes, and how many classes it lacks were predicted (each enters
    # scikit-learn's macro-F1 with F1 0: R52's dev split has 39 of its 52 classes)
    return {"macro_f1": rep["macro_f1"], "tail_f1": rep["tail_f1"], "accuracy": rep["accuracy"],
            "log_loss": F.cross_entropy(logits, gold).item(), "macro_f1_own": rep["macro_f1_split_classes"],
            "absent": len(rep["absent_predicted"])}, logits


def _adjusted(model, dev_raw, dev, test_raw, test, theta: float, counts: dict, carved: bool) -> dict:
    """What the default predicts from this checkpoint: the post-hoc logit adjustment that `auto` fits on the kept
    step's dev scores after training (τ fitted on dev for the test data ``--adjust-target auto`` aims at: balanced
    where the dev set was carved from imbalanced training data), fitted here at every evaluation by a fresh
    ``LogitAdjust`` on the model's prior and target, so the model's own calibration (τ = 0 while it trains) is left
    as it is. Empty for a calibration not chosen on dev."""
    from tailtune.objectives import LogitAdjust
    cal = model.calibration
    if not getattr(cal, "from_dev", False):
        return {}
    gold = [model.labels.index(y) for y in dev.labels]
    out = {}
    for suffix, own in (("", False), ("_own", True)):  # τ chosen on dev macro-F1 over all classes / dev's own
        adjust = LogitAdjust(cal.prior, tau=0.0, from_dev=True, target=cal.target, own_classes=own)
        fitted = adjust.fit(dev_raw, gold, carved=carved)
        out.update({f"tau{suffix}": fitted[0]["adjust_tau"],
                    **{f"{part}_adjusted{suffix}_{k}": v for part, ds, raw in (("dev", dev, dev_raw),
                                                                              ("test", test, test_raw))
                       for k, v in _scores(model, ds, theta, counts, adjust(raw))[0].items()}})
    return out


def run(data: tuple, name: str, method: str, seed: int, max_length: int, bf16: bool = False,
        carved: bool = False) -> dict:
    """``data``: quality.load's (train, dev, test, max length, theta, few-shot?) of the set and seed; ``carved``: its
    dev split was carved from imbalanced training data (as `tailtune train` carves one when given none), which the
    post-hoc adjustment reads as a balanced target."""
    import tailtune as tt
    import tailtune.api as api
    from tailtune.metrics import near_balanced
    train, dev, test, _, theta, _ = data
    clf = tt.TailtuneClassifier("auto", max_length=max_length, theta=theta, **AUTO_VARIANTS[method],
                                train_config=tt.preset_train_config("auto", seed=seed, progress=False, bf16=bf16,
                                                                    **{**AUTO_TRAIN.get(method, {}), "patience": None}))
    built: list = []
    build = api.build_classifier

    def capture(*args, **kwargs):  # the model fit() builds, to score it at each evaluation
        built.append(build(*args, **kwargs))
        return built[-1]

    counts = dict(Counter(train.labels))
    evals: list[dict] = []

    carved = carved and not near_balanced(train.labels)  # (as fit() reads a carved dev set)

    def on_evaluate(step: int, _metrics: dict) -> None:
        row, raw = {"step": step}, {}
        for part, ds in (("dev", dev), ("test", test)):
            scores, raw[part] = _scores(built[-1], ds, theta, counts)
            row.update({f"{part}_{k}": v for k, v in scores.items()})
        evals.append({**row, **_adjusted(built[-1], raw["dev"], dev, raw["test"], test, theta, counts, carved)})

    clf_fit = clf.fit
    clf.fit = lambda tr, dev=None: clf_fit(tr, dev=dev, on_evaluate=on_evaluate)
    api.build_classifier = capture
    try:
        seconds = fit_timed(clf, train, dev)
    finally:
        api.build_classifier = build
    return {"dataset": name, "method": method, "seed": seed, "max_length": max_length, "bf16": bf16,
            "n_dev": len(dev), "train_seconds": seconds,
            "steps": clf.train_result_.steps, "evals": evals}


# rule -> index of the evaluation it keeps (ties: the earliest, as the training loop does); None where the run did
# not record what the rule reads
def _best(evals: list[dict], key: str, sign: float = 1.0, start: int = 0) -> int | None:
    if not all(key in e for e in evals):
        return None
    return max(range(start, len(evals)), key=lambda i: (sign * evals[i][key], -i))


def _stop_point(r: dict, from_floor: bool = True, key: str = "dev_macro_f1") -> tuple[int, int] | None:
    """(the checkpoint `auto`'s early stopping keeps, the evaluation it stops after): the best dev ``key`` so far
    when it stops; it stops after the recipe's patience of evaluations without a better one, never before its floor
    share of the steps, and an evaluation before the floor does not count towards the patience. Without
    ``from_floor`` it does (the rule of `auto-prev`, the default before). The recipe is `auto`'s with the run's
    variant's overrides (quality.AUTO_TRAIN); without patience it never stops."""
    from tailtune.config import AUTO_TRAIN as RECIPE
    recipe = {**RECIPE, **AUTO_TRAIN.get(r["method"], {})}
    last = len(r["evals"]) - 1
    if recipe["patience"] is None or _best(r["evals"], key) is None:
        best = _best(r["evals"], key)
        return None if best is None else (best, last)
    patience, floor = recipe["patience"], recipe["patience_from"] * r["steps"]
    best, bad = 0, 0
    for i, e in enumerate(r["evals"]):
        if i == 0 or e[key] > r["evals"][best][key]:
            best, bad = i, 0
        elif e["step"] >= floor or not from_floor:
            bad += 1
        if bad >= patience and e["step"] >= floor:
            return best, i
    return best, last


def _stopped(r: dict, from_floor: bool = True, key: str = "dev_macro_f1") -> int | None:
    """The checkpoint `auto`'s early stopping keeps (``_stop_point``'s first)."""
    point = _stop_point(r, from_floor, key)
    return None if point is None else point[0]


@functools.cache
def _auto_dev_sizes() -> dict:
    """(set, seed) -> dev size of quality.py's `auto` rows (read once); (set, None) -> the size every seed of the
    set shares, where they all share one (a dev split the set gives, as R52's, or a carve of one size on every seed:
    the standard-error bound reads only the size)."""
    sizes = {(q["dataset"], q["seed"]): q["n_dev"] for q in read_jsonl(OUT.parent / "results.jsonl")
             if q["method"] == "auto"}
    per_set: dict = {}
    for (name, _), n in sizes.items():
        per_set.setdefault(name, set()).add(n)
    return {**sizes, **{(name, None): next(iter(ns)) for name, ns in per_set.items() if len(ns) == 1}}


def _n_dev(r: dict) -> int | None:
    """The run's dev size: its row's, else (rows recorded before it was) quality.py's `auto` row of the same set and
    seed (the same split), else the dev size all of the set's `auto` rows share (a given dev split, for a seed that
    quality.py did not run)."""
    sizes = _auto_dev_sizes()
    return r.get("n_dev") or sizes.get((r["dataset"], r["seed"])) or sizes.get((r["dataset"], None))


def _latest_within_se(r: dict, key: str = "dev_macro_f1") -> int | None:
    """The latest evaluation, up to where `auto` stops, whose dev ``key`` is within one standard error of the best
    one's (``sqrt(a(1 - a) / n)`` of its dev accuracy ``a`` on ``n`` dev texts; a lower bound for macro-F1's): the
    one-standard-error rule, preferring the later (more annealed: the learning rate decays to zero) checkpoint
    where dev cannot tell them apart."""
    point, n = _stop_point(r, key=key), _n_dev(r)
    if point is None or not n:
        return None
    best, end = point
    a = r["evals"][best]["dev_accuracy"]
    bound = r["evals"][best][key] - (a * (1 - a) / n) ** 0.5
    return max(i for i in range(end + 1) if r["evals"][i][key] >= bound)


def _best_smoothed(r: dict, key: str = "dev_macro_f1", half_width: int = 1) -> int | None:
    """The best evaluation, up to where `auto` stops, by the mean dev ``key`` of it and its neighbours (``half_width``
    on each side, fewer at the ends): a noisy dev score averaged over nearby checkpoints, which rank alike if dev
    differences between neighbours are noise."""
    point = _stop_point(r, key=key)
    if point is None:
        return None
    evals = r["evals"][:point[1] + 1]
    return _best([{key: statistics.mean(e[key] for e in evals[max(0, i - half_width):i + half_width + 1])}
                  for i in range(len(evals))], key)


# rule -> index of the evaluation it keeps from a run's row (ties: the earliest, as the training loop does)
RULES = {
    "best dev macro-F1 (auto, all epochs)": lambda r: _best(r["evals"], "dev_macro_f1"),
    "auto's early stopping (its patience counted from its floor)": _stopped,
    "early stopping counting evaluations before its floor (auto-prev's)": lambda r: _stopped(r, from_floor=False),
    "best dev accuracy": lambda r: _best(r["evals"], "dev_accuracy"),
    "least dev log-loss": lambda r: _best(r["evals"], "dev_log_loss", -1.0),
    "best dev macro-F1 in the second half": lambda r: _best(r["evals"], "dev_macro_f1", start=len(r["evals"]) // 2),
    "the last evaluation": lambda r: len(r["evals"]) - 1,
    "the latest within one standard error of auto's kept dev macro-F1, up to where auto stops": _latest_within_se,
    "best mean dev macro-F1 of an evaluation and its two neighbours, up to where auto stops": _best_smoothed,
    "best dev macro-F1 after the adjustment": lambda r: _best(r["evals"], "dev_adjusted_macro_f1"),
    "auto's early stopping on dev macro-F1 after the adjustment": lambda r: _stopped(r, key="dev_adjusted_macro_f1"),
    # dev macro-F1 over the dev split's own classes: a class it lacks, if predicted, costs only the recall of the
    # texts it took, not a whole class's F1 (R52's dev split has 39 of its 52 classes; R52 K=32's 18)
    "best dev macro-F1 over dev's own classes": lambda r: _best(r["evals"], "dev_macro_f1_own"),
    "auto's early stopping on dev macro-F1 over dev's own classes": lambda r: _stopped(r, key="dev_macro_f1_own"),
    "(oracle: best test macro-F1)": None,  # the best test score of the table's own (summary's key)
}


def summary(rows: list[dict], key: str = "test_macro_f1") -> str:
    """The rules' table: test ``key`` of the checkpoint each rule keeps (the groups whose runs all have it)."""
    groups: dict = {}
    for r in rows:
        if all(key in e for e in r["evals"]):
            groups.setdefault((r["dataset"], r["method"], r["max_length"]), []).append(r)
    lines = ["| set | method | length | seeds | " + " | ".join(RULES) + " |", "|---|---|---|---|" + "---|" * len(RULES)]
    for (name, method, length), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        cells = []
        for rule in RULES.values():
            kept = [rule(r) if rule else _best(r["evals"], key) for r in runs]
            if None in kept:
                cells.append("–")
                continue
            picks = [r["evals"][i] for r, i in zip(runs, kept)]
            f1 = [100 * p[key] for p in picks]
            cells.append(f"{statistics.mean(f1):.1f} ({' / '.join(f'{v:.1f}' for v in f1)}; "
                         f"eval {', '.join(str(r['evals'].index(p) + 1) for r, p in zip(runs, picks))})")
        lines.append(f"| {name} | {method} | {length} | {', '.join(str(r['seed']) for r in runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\nEach cell: mean test macro-F1 of the checkpoint the rule keeps (per seed; which of "
                               "the evaluations it kept, 1-based); the rules choose on dev scores as trained, except the two after the "
                               "adjustment; –: runs that did not record what the rule reads.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--only", nargs="+", default=["r52"])
    p.add_argument("--methods", nargs="+", default=["auto"], choices=list(AUTO_VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[13, 21, 42])
    p.add_argument("--max-length", type=int, default=None, help="default: the set's length in quality.py (the CPU "
                   "protocol); 256 is the long-tail paper's")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (on a GPU)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--summary", action="store_true", help="print the rules' table from --out and exit")
    args = p.parse_args()
    if args.summary:
        rows = read_jsonl(args.out)
        print("As trained (before the post-hoc logit adjustment):\n\n" + summary(rows))
        print("\nAfter the default's post-hoc logit adjustment, fitted on dev at the kept checkpoint (what `auto` "
              "predicts; the runs that recorded it):\n\n" + summary(rows, "test_adjusted_macro_f1"))
        print("\nThe same, its τ for the dev target chosen on dev macro-F1 over dev's own classes (the runs that "
              "recorded it):\n\n" + summary(rows, "test_adjusted_own_macro_f1"))
        print("\nTail-F1 after the default's adjustment (its τ as `auto` chooses it):\n\n"
              + summary(rows, "test_adjusted_tail_f1"))
        print("\nTail-F1, its τ chosen on dev's own classes:\n\n" + summary(rows, "test_adjusted_own_tail_f1"))
        return
    done = {(r["dataset"], r["method"], r["seed"], r["max_length"]) for r in read_jsonl(args.out)}
    for name in args.only:
        for method in args.methods:
            for seed in args.seeds:
                data = load(args.data_dir, name, seed)  # (once per run: the set's length is part of its key)
                length = args.max_length or data[3]
                if (name, method, seed, length) in done:
                    continue
                row = run(data, name, method, seed, length, args.bf16, dev_carved(args.data_dir, name))
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                best = row["evals"][RULES["best dev macro-F1 (auto, all epochs)"](row)]
                print(f"{name} {method} seed {seed}: {len(row['evals'])} evaluations, {row['train_seconds']:.0f} s; "
                      f"best dev macro-F1 keeps test macro-F1 {best['test_macro_f1']:.4f}", flush=True)


if __name__ == "__main__":
    main()
