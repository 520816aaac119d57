"""Early exit on R52, TREC-50 and 16-shot SST-2: train the default with one classifier per layer (PABEE
joint training, or ``--exit-training two-stage`` (DeeBERT) / ``self-distill`` (FastBERT)), then the speed / quality curve at batch 1 and 64: entropy thresholds as fractions of
ln(classes), and PABEE's patience.

    python benchmarks/serving/early_exit.py --data-dir ../shared/data      # -> results/serving/early_exit.json

Each set: its split and max length of the peer benchmark (benchmarks/peers/quality.py), seed 13; the
model is `auto` with head `early-exit` over its cosine head (`exit_head: cosine`). Full depth is the
last classifier; "speed-up" is full-depth wall time over early-exit wall time on the test set, each the fastest of
``--repeats`` runs (default 3). The curve
comes from ``tailtune.early_exit.exit_curve`` (normalized entropy, then patience). ``--contrastive-head-only-below
0`` fine-tunes the body with the exits where `auto` would train only the head (16 per class or fewer).
``--exit-training self-distill --unlabeled N`` adds N unlabelled texts of the set to the self-distillation (FastBERT's).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "prompting"))

# entropy thresholds as fractions of the largest possible entropy, ln(classes): an absolute grid is too coarse
# for 2 classes (max 0.69) and too fine for 50 (max 3.9); then PABEE's patience rule
RELATIVE = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
PATIENCE = [1, 2, 3, 4]


def main() -> None:
    import torch

    import tailtune as tt
    from quality import load
    from tailtune.early_exit import exit_curve, predict_early_exit
    from tailtune.heads.early_exit import EXIT_TRAINING
    from tailtune.training import predict_logits
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--sets", nargs="*", default=["sst2", "trec50", "r52"])
    p.add_argument("--out", default="benchmarks/results/serving/early_exit.json")
    p.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs (smoke runs)")
    p.add_argument("--exit-training", default="joint", choices=EXIT_TRAINING,
                   help="joint (PABEE), two-stage (DeeBERT) or self-distill (FastBERT); the last two add the exit-heads "
                        "stage. Results of other than joint are keyed SET/MODE")
    p.add_argument("--batches", nargs="*", type=int, default=[1, 64], help="batch sizes to time")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--contrastive-head-only-below", type=int, default=None,
                   help="override auto's bound for training only the head after the contrastive stage (0: the body "
                        "fine-tunes with the exits at every size); results keyed SET/.../head-only-below-N")
    p.add_argument("--contrastive-every-exit", type=int, choices=(0, 1), default=None,
                   help="override the contrastive stage's pair loss with joint exits: 1 at every exit's layer, weighted "
                        "by depth, 0 the last layer only (the default); results keyed "
                        "SET/.../pairs-every-exit or SET/.../pairs-last-layer")
    p.add_argument("--unlabeled", type=int, default=0, help="with --exit-training self-distill: this many unlabelled "
                   "texts join the self-distillation (FastBERT's), drawn from the set's classic training texts "
                   "minus its test set, as the prompting benchmark's PET pool (16-shot sets only)")
    p.add_argument("--exit-heads-epochs", type=float, default=None, help="epochs of the exit-heads stage (default: "
                   "the stage's, 3)")
    p.add_argument("--exit-inner-head", default=None, help="the classifier after each inner layer (default: the "
                   "classifier's own, e.g. the fastbert preset's)")
    p.add_argument("--repeats", type=int, default=3, help="time each curve point (and full depth) this many times "
                   "and keep the fastest (best of N; before this option, one run each)")
    p.add_argument("--exit-agreement", type=float, default=None, help="choose the exit threshold after training: "
                   "the largest normalized entropy whose answers agree with full depth on this share of a tenth of "
                   "the unlabelled texts, held out of the exit-heads stage (the fastbert preset's 0.99); the row then "
                   "holds the test point at that threshold beside the curve; results keyed SET/.../agreement-X")
    p.add_argument("--note", default=None, help="what else ran beside this run (stored with its results)")
    p.add_argument("--batch1-texts", type=int, default=None,
                   help="time batch 1 on the first N test texts only (default: all; macro-F1 then on those N)")
    a = p.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name in a.sets:
        key = (name + ("" if a.exit_training == "joint" else f"/{a.exit_training}")
               + ("" if a.seed == 13 else f"/seed{a.seed}")
               + ("" if a.contrastive_head_only_below is None else f"/head-only-below-{a.contrastive_head_only_below}")
               + ("" if a.contrastive_every_exit is None
                  else f"/pairs-{'every-exit' if a.contrastive_every_exit else 'last-layer'}")
               + (f"/unlabeled-{a.unlabeled}" if a.unlabeled else "")
               + ("" if a.exit_heads_epochs is None else f"/exit-epochs-{a.exit_heads_epochs:g}")
               + ("" if a.exit_inner_head is None else f"/inner-{a.exit_inner_head}")
               + ("" if a.exit_agreement is None else f"/agreement-{a.exit_agreement:g}"))
        if key in results:
            continue
        train, dev, test, max_length, theta, few = load(Path(a.data_dir), name, a.seed)
        recipe = tt.preset_train_config("auto", seed=a.seed, progress=False, **({"epochs": a.epochs} if a.epochs else {}))
        staged = {} if a.exit_training == "joint" else {"stages": (*tt.config_from_preset("auto").stages, "exit-heads")}
        if a.contrastive_head_only_below is not None:
            staged["contrastive_head_only_below"] = a.contrastive_head_only_below
        if a.contrastive_every_exit is not None:
            staged["contrastive_every_exit"] = bool(a.contrastive_every_exit)
        if a.exit_heads_epochs is not None:
            staged["exit_heads_epochs"] = a.exit_heads_epochs
        if a.exit_inner_head is not None:
            staged["exit_inner_head"] = a.exit_inner_head
        if a.exit_agreement is not None:
            staged.update(exit_agreement=a.exit_agreement, exit_rule="normalized-entropy")
        clf = tt.TailtuneClassifier("auto", head="early-exit", exit_head="cosine", max_length=max_length, theta=theta,
                                    exit_training=a.exit_training, train_config=recipe, **staged)
        pool = None
        if a.unlabeled:
            from fewshot import unlabeled_pool
            pool = unlabeled_pool(Path(a.data_dir), name, train, dev, test, a.unlabeled, a.seed) or None
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            said: list[str] = []  # (what training printed of the threshold it chose, and the held-out curve)
            clf.fit(train, dev=dev if len(dev) else None, log=said.append, **({"unlabeled": pool} if pool else {}))
        train_seconds = time.perf_counter() - t0
        model, enc = clf.model_, clf.model_.encode(test.texts)
        device = next(clf.model_.parameters()).device
        row = {**({"note": a.note} if a.note else {}), "exit_training": a.exit_training, "seed": a.seed,
               **({} if a.contrastive_head_only_below is None
                  else {"contrastive_head_only_below": a.contrastive_head_only_below}),
               **({} if a.contrastive_every_exit is None else {"contrastive_every_exit": bool(a.contrastive_every_exit)}),
               **({"unlabeled": len(pool)} if pool else {}), "exit_inner_head": clf.config.of("head").exit_inner_head,
               **({"threshold_choice": [line.strip() for line in said if "threshold" in line]}
                  if a.exit_agreement is not None else {}),
               "n_test": len(test), "max_length": max_length, "train_seconds": train_seconds, "repeats": a.repeats,
               "curve": {},
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
        predict_logits(model, enc[:64], 64)  # warm-up (a GPU's first calls set up kernels): not timed
        predict_early_exit(model, enc[:64], "patience", None, 1, batch_size=64)
        for batch in a.batches:
            n = len(enc) if batch > 1 or a.batch1_texts is None else min(a.batch1_texts, len(enc))
            timed, gold = enc[:n], test.labels[:n]  # batch 1 on the first n texts (--batch1-texts): the same
            # predictions as batch 64 (tested), so only the timing needs it. One full-depth pass, the reference of
            # both rules
            by_entropy = exit_curve(model, timed, gold, RELATIVE, "normalized-entropy", batch, theta, repeats=a.repeats)
            full, top = by_entropy[0], math.log(len(model.labels))
            by_patience = exit_curve(model, timed, gold, PATIENCE, "patience", batch, theta, reference=full,
                                     repeats=a.repeats)[1:]
            curve = [{**c, "rule": "entropy", "threshold": c["threshold"] * top, "relative_threshold": c["threshold"]}
                     for c in by_entropy[1:]] + [{**c, "relative_threshold": None} for c in by_patience]
            row["curve"][str(batch)] = {"texts": n, "full_depth_seconds": full["seconds"],
                                        "full_depth_macro_f1": full["macro_f1"], "points": curve}
            print(f"{key} batch {batch}: full depth {full['macro_f1']:.4f} in {full['seconds']:.1f} s", flush=True)
            for c in curve:
                print(f"   {c['rule']} {c['threshold']:<6.3f} macro-F1 {c['macro_f1']:.4f} ({100 * (c['f1_share'] or 0):.1f} %) "
                      f"layers {c['mean_layers']:.2f} {c['seconds']:.1f} s ({c['speedup']:.2f}x)", flush=True)
            if a.exit_agreement is not None:  # the threshold training chose, without the test labels
                head = model.head
                chosen = exit_curve(model, timed, gold, [head.threshold], head.rule, batch, theta, reference=full,
                                    repeats=a.repeats)[1]
                row["curve"][str(batch)]["chosen"] = {**chosen, "relative_threshold": head.threshold}
                print(f"   chosen (agreement {a.exit_agreement:g} on held-out unlabelled texts): normalized entropy "
                      f"{head.threshold:.3f}, macro-F1 {chosen['macro_f1']:.4f} ({100 * chosen['f1_share']:.1f} %) "
                      f"layers {chosen['mean_layers']:.2f} ({chosen['speedup']:.2f}x)", flush=True)
        results[key] = row
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
