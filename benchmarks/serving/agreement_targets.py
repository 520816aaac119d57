"""Which agreement target keeps the quality? ``--exit-agreement T`` (the ``fastbert`` preset's 0.99) picks the most
eager exit threshold whose answers agree with full depth on at least T of a held-out tenth of the unlabelled texts.
This trains the classifier once per seed as ``early_exit.py --exit-agreement 0.99 --exit-inner-head mlp`` does, takes
the very texts the stage held out (the stage's own split), and, for each target, the threshold that target picks
there; then, on the test set, the macro-F1 share of full depth and the mean layers at that threshold (simulated from
one all-layer pass, ``layer_probs`` + ``simulate_exits``, which equal the exit pass's answers and layers: tested). No
timing: layers only. One JSON row per (set, seed) in ``--out``; ``--summary`` prints the table.

    python benchmarks/serving/agreement_targets.py --sets sst2 --seeds 13 21 42 87 100
    python benchmarks/serving/agreement_targets.py --summary
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prompting"))

TARGETS = [0.95, 0.96, 0.97, 0.98, 0.99, 0.995]
OUT = "benchmarks/results/serving/agreement_targets.jsonl"
RULE = "normalized-entropy"


def run(name: str, seed: int, data_dir: Path) -> dict:
    import tailtune as tt
    from fewshot import unlabeled_pool
    from quality import load
    from tailtune.early_exit import choose_by_agreement, layer_probs, simulate_exits
    from tailtune.metrics import long_tail_report
    from tailtune.stages.exit_heads import hold_out
    train, dev, test, max_length, theta, _ = load(data_dir, name, seed)
    staged = {"stages": (*tt.config_from_preset("auto").stages, "exit-heads"), "exit_inner_head": "mlp",
              "exit_agreement": 0.99, "exit_rule": RULE}
    clf = tt.TailtuneClassifier("auto", head="early-exit", exit_head="cosine", max_length=max_length, theta=theta,
                                exit_training="self-distill",
                                train_config=tt.preset_train_config("auto", seed=seed, progress=False), **staged)
    pool = unlabeled_pool(data_dir, name, train, dev, test, 100000, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(train, dev=dev if len(dev) else None, unlabeled=pool)
    held, _ = hold_out(list(pool), seed)  # (the texts the stage held out of its training: its own split)
    model = clf.model_
    on_held, on_test = layer_probs(model, model.encode(held)), layer_probs(model, model.encode(test.texts))
    full_test = on_test[:, -1].argmax(-1)

    def macro_f1(answers) -> float:
        return long_tail_report(test.labels, [model.labels[i] for i in answers.tolist()], theta)["macro_f1"]
    reference = macro_f1(full_test)

    def on_test_at(options: dict, agreement: float, layers: float) -> dict:
        t = options.get("exit_threshold", 0.0)
        answers, used = simulate_exits(on_test, RULE, t)
        return {"threshold": t, "held_agreement": agreement, "held_layers": layers,
                "test_f1_share": macro_f1(answers) / reference, "test_layers": float(used.float().mean()),
                "test_agreement": float((answers == full_test).float().mean())}
    # every candidate on the held-out texts, then the setting each target picks there (the stage's own rule)
    points = [on_test_at(*point) for point in choose_by_agreement(on_held, RULE, 0.0)[3]]
    chosen = {str(target): on_test_at(*choose_by_agreement(on_held, RULE, target)[:3]) for target in TARGETS}
    # the stage's own choice is the 0.99 column's threshold: the same texts, the same rule
    assert abs(chosen["0.99"]["threshold"] - model.head.threshold) < 1e-9, (chosen["0.99"], model.head.threshold)
    return {"set": name, "seed": seed, "held_out": len(held), "n_test": len(test), "full_depth_macro_f1": reference,
            "stage_threshold": model.head.threshold, "points": points, "chosen": chosen}


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    for name in sorted({r["set"] for r in rows}):
        mine = sorted((r for r in rows if r["set"] == name), key=lambda r: r["seed"])
        print(f"{name}: test macro-F1 share of full depth / mean layers at the threshold each target picks")
        print("| seed | " + " | ".join(f"target {t:g}" for t in TARGETS) + " |")
        print("|---" * (len(TARGETS) + 1) + "|")
        for r in mine:
            print(f"| {r['seed']} | " + " | ".join(f"{100 * r['chosen'][str(t)]['test_f1_share']:.1f} % / "
                                                    f"{r['chosen'][str(t)]['test_layers']:.2f}" for t in TARGETS) + " |")
        print("| seeds at >= 99 % | " + " | ".join(
            str(sum(r["chosen"][str(t)]["test_f1_share"] >= 0.99 for r in mine)) for t in TARGETS) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--sets", nargs="*", default=["sst2"])
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42, 87, 100])
    p.add_argument("--out", default=OUT)
    p.add_argument("--summary", action="store_true")
    a = p.parse_args()
    if a.summary:
        return summary(a.out)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["set"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())} if out.is_file() else set()
    for name in a.sets:
        for seed in a.seeds:
            if (name, seed) in done:
                continue
            row = run(name, seed, Path(a.data_dir))
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} seed {seed}: " + ", ".join(
                f"{t}: {100 * c['test_f1_share']:.1f} % / {c['test_layers']:.2f}" for t, c in row["chosen"].items()),
                flush=True)


if __name__ == "__main__":
    main()
