"""Which classifier on the body that `auto`'s contrastive stage tuned? On the 16-shot sets `auto` trains only its
cosine head (from the class prototypes) after the stage, and its best dev checkpoint is usually the first; SetFit
fits scikit-learn's LogisticRegression (defaults, C=1) on the tuned body. This fits `auto` as the peer benchmark
does, then scores three classifiers on the same tuned body: `auto`'s own head, the nearest class mean (cosine to
the normalised class prototypes, the head's starting point) and SetFit's logistic regression on the normalised
read vectors. One JSON line per (set, seed), accuracy on the full test set.

    python benchmarks/peers/head_ablation.py --only mr --seeds 13 21 42 87 100
    python benchmarks/peers/head_ablation.py --summary     # per-set means and the paired differences, from the file
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def read_vectors(model, texts) -> "np.ndarray":
    """Normalised read vectors (the head's input) of ``texts`` through the classifier's tuned body."""
    import numpy as np
    import torch

    from tailtune.training import encode_features
    enc = model.encode(list(texts))
    out = []
    with torch.no_grad():
        for f in encode_features(model, enc, 64):
            x, _ = model.readout(f[None], torch.ones(1, f.shape[0], dtype=torch.long), torch.tensor([0]))
            out.append(torch.nn.functional.normalize(x[0], dim=-1).numpy())
    return np.stack(out)


CLASSIFIERS = ("auto_head", "nearest_class_mean", "logistic_regression")


def summarise(path: Path) -> None:
    """Mean accuracy per set and classifier, then each other classifier's mean difference from `auto`'s head over
    all runs, paired by (set, seed), with its standard error."""
    import statistics as st
    rows = {(r["dataset"], r["seed"]): r for r in map(json.loads, path.read_text().splitlines())}  # last run wins
    for name in dict.fromkeys(d for d, _ in rows):
        runs = [r for (d, _), r in rows.items() if d == name]
        print(f"{name:6s} ({len(runs)} seeds): " + " / ".join(
            f"{c} {100 * st.mean(r[c] for r in runs):.2f}" for c in CLASSIFIERS))
    for c in CLASSIFIERS[1:]:
        diff = [100 * (r[c] - r["auto_head"]) for r in rows.values()]
        se = st.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else float("nan")
        print(f"{c} - auto_head over {len(diff)} runs: {st.mean(diff):+.2f} +- {se:.2f} points (standard error)")


def main() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import tailtune as tt
    from quality import FEWSHOT, load
    from tailtune.artefacts import jsonable
    from tailtune.experiment import append_line
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--only", nargs="*", default=list(FEWSHOT))
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42, 87, 100])
    p.add_argument("--out", default="benchmarks/results/quality/head_ablation.jsonl")
    p.add_argument("--summary", action="store_true", help="print the summary of --out and exit")
    a = p.parse_args()
    if a.summary:
        return summarise(Path(a.out))
    for name in a.only:
        for seed in a.seeds:
            train, dev, test, length, theta, _ = load(Path(a.data_dir), name, seed)
            clf = tt.TailtuneClassifier("auto", max_length=length, theta=theta,
                                        train_config=tt.preset_train_config("auto", seed=seed, progress=False))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(train, dev=dev)
            gold = np.array(test.labels)
            x_train, x_test = read_vectors(clf.model_, train.texts), read_vectors(clf.model_, test.texts)
            y_train = np.array(train.labels)
            labels = sorted(set(train.labels))
            protos = np.stack([x_train[y_train == c].mean(0) for c in labels])
            protos /= np.linalg.norm(protos, axis=1, keepdims=True)
            lr = LogisticRegression(max_iter=1000).fit(x_train, y_train)
            row = {"dataset": name, "seed": seed,
                   "auto_head": float(np.mean(np.array(clf.predict(list(test.texts))) == gold)),
                   "nearest_class_mean": float(np.mean(np.array(labels)[(x_test @ protos.T).argmax(1)] == gold)),
                   "logistic_regression": float(np.mean(lr.predict(x_test) == gold))}
            print(json.dumps(row), flush=True)
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            append_line(Path(a.out), json.dumps(jsonable(row)))


if __name__ == "__main__":
    main()
