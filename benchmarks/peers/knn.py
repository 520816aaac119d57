"""Nearest neighbours in the tuned body's space, mixed into `auto`'s class scores, on the very same trained classifiers.

    python benchmarks/peers/knn.py --only r52 --seeds 13 21 42 --save-vectors DIR
    python benchmarks/peers/knn.py --summary

The question: does a memory of the training texts help `auto` where its cosine head is weakest, the tail classes of
one to a few training texts, whose single class weight must stand for texts that may not look alike? Retrieval over
the training set is the usual remedy in long-tail and few-shot work (kNN-augmented classifiers, e.g. Khandelwal et
al., 2020's kNN-LM; retrieval-augmented long-tail recognition, Long et al., 2022): every training text votes, so a
tail class with two unlike texts keeps both.

Each run trains ``auto`` without its memory (``quality.py``'s ``auto-no-memory``: same splits, seed and recipe; the
λ = 0 column reproduces the peer table's cell of the default before the memory), then reads the unit vectors the
cosine head compares, ``LN(h) / ‖LN(h)‖``, of the training, dev and test texts, and scores dev and test with two
mixtures, each for every λ of ``LAMBDAS``:

- ``nn``: ``(1 − λ)·z + λ·s·max_{i in c} cos(v, v_i)``: the head's calibrated scores ``z`` (τ applied) mixed with
  each class's score of its nearest training text, on the head's own scale ``s``. One score per class, not a vote
  count; still, the best of many texts is higher than the best of a few, so a large class gains from its size.
- ``knn``: ``(1 − λ)·softmax(z) + λ·p_knn``, ``p_knn`` the weighted vote of the ``K`` nearest training texts, each
  weighing ``exp(s·cos)`` (the kNN-LM form). Large classes have more neighbours to vote with.

λ is then chosen on dev by the rule that chooses τ (the smallest λ within one standard error of dev's best macro-F1),
and the row keeps every λ's scores, so other rules can be read off later. Rows go to
``benchmarks/results/quality/knn.jsonl``. ``--save-vectors DIR`` also writes each run's vectors, scores and gold labels
(safetensors) so a new mixture can be scored without training again.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import FEWSHOT, auto_classifier, by_dataset, dev_carved, fit_timed, load, read_jsonl  # noqa: E402

from tailtune.objectives import smallest_within_one_se  # noqa: E402  (the rule that chooses τ and the memory's λ)

LAMBDAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
K = 10
MIXTURES = ("nn", "knn")


def head_vectors(model, encoded, batch_size: int = 64):
    """(n, dim) the unit vectors that the cosine head compares with its class weights (and that its memory holds)."""
    return model.head.unit_vectors(model.read_vectors(encoded, batch_size))


def score(t: dict, meta: dict, dataset: str) -> dict:
    """Both mixtures at every λ on dev and test, from a run's saved tensors (``run`` makes them; ``--rescore`` reads
    them back). The ``nn`` mixture is scored as the library's ``memory`` stage does it: the head's raw scores mixed,
    then the logit adjustment's τ fitted on the mixed dev scores, as `auto` fits it (``LogitAdjust.fit``, its target
    ``auto``); ``knn`` mixes probabilities after the τ of λ = 0."""
    import torch
    from sklearn.metrics import balanced_accuracy_score

    from tailtune.heads.cosine import nearest_cosines
    from tailtune.metrics import long_tail_report
    from tailtune.objectives import LogitAdjust, balanced_log_loss
    from tailtune.priorshift import fit_temperature
    scale, theta, labels = float(meta["scale"]), float(meta["theta"]), json.loads(meta["labels"])
    train_y, n_classes = t["train_gold"], len(labels)
    counts = {labels[i]: int(n) for i, n in enumerate(torch.bincount(train_y, minlength=n_classes))}
    golds = {part: [labels[i] if i >= 0 else "<not in training>" for i in t[f"{part}_gold"].tolist()]
             for part in ("dev", "test")}
    raw = {part: t[f"{part}_raw"] for part in ("dev", "test")}
    near = {part: scale * nearest_cosines(t[f"{part}_vectors"], t["train_vectors"], train_y, raw[part] / scale)
            for part in ("dev", "test")}
    adjust = LogitAdjust(t["log_prior"], 0.0, True, "auto")
    out: dict = {"dev": {"nn": {}, "knn": {}}, "test": {"nn": {}, "knn": {}}, "tau": {}, "dev_balanced": {},
                 "carved": meta["carved"] == "true"}

    def report(part: str, s) -> list:
        rep = long_tail_report(golds[part], [labels[i] for i in s.argmax(1).tolist()], theta, counts)
        return [rep["macro_f1"], rep["tail_f1"], rep["accuracy"]]
    gold = t["dev_gold"].tolist()
    for lam in LAMBDAS:
        mixed = {part: (1 - lam) * raw[part] + lam * near[part] for part in raw}
        adjust.fit(mixed["dev"], gold, carved=meta["carved"] == "true")
        out["tau"][str(lam)] = adjust.tau
        for part, scores in mixed.items():
            out[part]["nn"][str(lam)] = report(part, adjust(scores))
        dev = adjust(mixed["dev"])  # (other rules for λ: class-balanced dev log-loss, temperature fitted; recall)
        with warnings.catch_warnings():  # (predictions of classes dev lacks: recall is over dev's own)
            warnings.simplefilter("ignore", UserWarning)
            out["dev_balanced"][str(lam)] = [balanced_log_loss(dev / fit_temperature(dev, gold), gold),
                                             balanced_accuracy_score(gold, dev.argmax(1).tolist())]
    adjust.fit(raw["dev"], gold, carved=meta["carved"] == "true")
    for part, r in raw.items():
        sims = t[f"{part}_vectors"] @ t["train_vectors"].T
        top, at = sims.topk(min(K, sims.shape[1]), dim=1)
        votes = torch.zeros(len(sims), n_classes).scatter_add_(1, train_y[at], torch.softmax(scale * top, dim=1))
        p = torch.softmax(adjust(r), dim=1)
        for lam in LAMBDAS:
            out[part]["knn"][str(lam)] = report(part, (1 - lam) * p + lam * votes)
    return out


def run(data_dir: Path, name: str, seed: int, save: Path | None, length: int | None = None) -> dict:
    import torch

    from tailtune.metrics import near_balanced
    from tailtune.training import predict_logits
    train, dev, test, max_length, theta, _ = load(data_dir, name, seed)
    max_length = length or max_length  # --max-length, as quality.py's
    fit_train, fit_dev = load(data_dir, name, seed, carve=False)[:2]  # as quality.py fits (fit carves the same dev)
    clf = auto_classifier(seed, max_length, theta, "auto-no-memory")
    seconds = fit_timed(clf, fit_train, fit_dev)
    model, labels = clf.model_, clf.labels_
    index = {y: i for i, y in enumerate(labels)}
    n = torch.tensor([float(clf.class_stats_["counts"][y]) for y in labels])
    scale = float(model.head.log_scale.exp())
    enc = {part: model.encode(ds.texts, ds.texts_b) for part, ds in (("train", train), ("dev", dev), ("test", test))}
    t = {"train_vectors": head_vectors(model, enc["train"]), "train_gold": torch.tensor([index[y] for y in train.labels]),
         "log_prior": (n / n.sum()).log()}
    for part, ds in (("dev", dev), ("test", test)):
        t |= {f"{part}_vectors": head_vectors(model, enc[part]),
              f"{part}_raw": predict_logits(model, enc[part], clf.train_config.eval_batch_size, calibrated=False),
              f"{part}_gold": torch.tensor([index.get(y, -1) for y in ds.labels])}
    meta = {"scale": str(scale), "theta": str(theta), "labels": json.dumps(labels), "dataset": name, "seed": str(seed),
            "carved": str(dev_carved(data_dir, name) and not near_balanced(train.labels)).lower()}
    row = {"dataset": name, "method": "auto", "seed": seed, "max_length": max_length, "train_seconds": seconds,
           "n_train": len(train), "n_dev": len(dev), "n_test": len(test), "scale": scale, "k": K,
           "torch_threads": torch.get_num_threads(),
           "fitted_options": clf.fitted_options_, "run_tau": getattr(model.calibration, "tau", None), **score(t, meta, name)}
    if save is not None:
        from safetensors.torch import save_file
        save.mkdir(parents=True, exist_ok=True)
        save_file({k: v.float().contiguous() if v.is_floating_point() else v.contiguous() for k, v in t.items()},
                  str(save / f"{name}-{seed}{f'-{length}' if length else ''}.safetensors"), metadata=meta)
    return row


def rescore(path: Path) -> dict:
    """A row again from a run's saved tensors (``--save-vectors``), without training."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    return {"dataset": meta["dataset"], "method": "auto", "seed": int(meta["seed"]), "n_train": len(t["train_gold"]),
            "n_dev": len(t["dev_gold"]), "n_test": len(t["test_gold"]), "scale": float(meta["scale"]), "k": K,
            "rescored": path.name, **score(t, meta, meta["dataset"])}


def picked(row: dict, mix: str) -> float:
    """The λ the one-standard-error rule picks on dev macro-F1, as the ``memory`` stage of ``auto`` picks it."""
    return smallest_within_one_se({lam: row["dev"][mix][str(lam)][0] for lam in LAMBDAS}, row["n_dev"])[0]


def summary(rows: list[dict]) -> None:
    """Per set and mixture: mean test score at every λ and at the λ dev picks (macro-F1; accuracy on 16-shot sets)."""
    by_set = by_dataset(rows)
    print("| set | seeds | mixture | " + " | ".join(f"λ={lam:g}" for lam in LAMBDAS) + " | λ from dev | tail-F1, λ = 0 → from dev |")
    print("|---|---|---|" + "---|" * (len(LAMBDAS) + 2))
    for name, rs in by_set.items():
        i = 2 if name in FEWSHOT else 0
        for mix in MIXTURES:
            cells = [f"{100 * statistics.mean(r['test'][mix][str(lam)][i] for r in rs):.1f}" for lam in LAMBDAS]
            chosen = [(r["test"][mix][str(picked(r, mix))], picked(r, mix)) for r in rs]
            lams = ", ".join(f"{lam:g}" for _, lam in chosen)
            tail0 = statistics.mean(r["test"][mix]["0.0"][1] for r in rs)
            print(f"| {name} | {len(rs)} | {mix} | " + " | ".join(cells)
                  + f" | {100 * statistics.mean(s[i] for s, _ in chosen):.1f} (λ {lams}) | "
                  + f"{100 * tail0:.1f} → {100 * statistics.mean(s[1] for s, _ in chosen):.1f} |")


def rules(rows: list[dict]) -> None:
    """Per set: mean test score of the ``nn`` mixture at the λ each rule picks on dev: the memory stage's (the smallest
    λ within one standard error of the best dev macro-F1), the least class-balanced dev log-loss (the rule τ follows on
    a carved dev set), the smallest λ within one standard error of the best balanced accuracy (mean recall), and 0."""
    picks = {"dev macro-F1, one SE (the stage's)": lambda r: picked(r, "nn"),
             "least balanced dev log-loss": lambda r: min(LAMBDAS, key=lambda lam: r["dev_balanced"][str(lam)][0]),
             "dev balanced accuracy, one SE": lambda r: smallest_within_one_se(
                 {lam: r["dev_balanced"][str(lam)][1] for lam in LAMBDAS}, r["n_dev"])[0],
             "none (λ = 0)": lambda r: 0.0}
    print("| set | dev | seeds | " + " | ".join(picks) + " |")
    print("|---|---|---|" + "---|" * len(picks))
    for name, rs in by_dataset([r for r in rows if "dev_balanced" in r]).items():
        i = 2 if name in FEWSHOT else 0
        cells = []
        for pick in picks.values():
            lams = [pick(r) for r in rs]
            mean = statistics.mean(r["test"]["nn"][str(lam)][i] for r, lam in zip(rs, lams))
            cells.append(f"{100 * mean:.1f} (λ {', '.join(f'{lam:g}' for lam in lams)})")
        print(f"| {name} | {'carved' if rs[0]['carved'] else 'given'} | {len(rs)} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "quality" / "knn.jsonl"))
    p.add_argument("--only", nargs="*", default=["r52", "trec50"])
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42])
    p.add_argument("--max-length", type=int, default=None,
                   help="train and read at this many tokens instead of the set's protocol length (use its own --out)")
    p.add_argument("--summary", action="store_true", help="print the table of the results file and stop")
    p.add_argument("--rules", action="store_true",
                   help="print the test score at the λ each rule for choosing it picks on dev, and stop")
    p.add_argument("--rescore", nargs="*", type=Path, default=None,
                   help="score these saved runs (--save-vectors files) again, replacing their rows, and stop")
    p.add_argument("--save-vectors", type=Path, default=None,
                   help="also write each run's unit vectors, raw scores, gold labels and log prior (safetensors) here")
    a = p.parse_args()
    out = Path(a.out)
    if a.summary or a.rules:
        (rules if a.rules else summary)(read_jsonl(out))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.rescore is not None:
        rows = {(r["dataset"], r["seed"]): r for r in read_jsonl(out)}
        for path in a.rescore:
            new = rescore(path)
            rows[new["dataset"], new["seed"]] = {**rows.get((new["dataset"], new["seed"]), {}), **new}
        from tailtune.artefacts import atomic_write_text, jsonable
        atomic_write_text(out, "".join(json.dumps(jsonable(r)) + "\n" for r in rows.values()))
        return
    done = {(r["dataset"], r["seed"]) for r in read_jsonl(out)}
    for name in a.only:
        for seed in a.seeds:
            if (name, seed) in done:
                continue
            print(f"{name} seed {seed}", flush=True)
            row = run(Path(a.data_dir), name, seed, a.save_vectors, a.max_length)
            print("    test macro-F1 by λ, nn: " + " ".join(f"{lam}:{100 * v[0]:.1f}" for lam, v in
                                                         row["test"]["nn"].items())
                  + f" ({row['train_seconds']:.0f} s)", flush=True)
            from tailtune.artefacts import jsonable
            from tailtune.experiment import append_line
            append_line(out, json.dumps(jsonable(row)))


if __name__ == "__main__":
    main()
