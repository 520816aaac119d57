"""Issue 11's 16-shot benchmark: prompt-based fine-tuning, demonstrations, automatic templates and label
words, PET / iPET and zero-shot, on LM-BFF's splits (16 per class for train and for dev, full test sets).

Prompt zero-shot, the searches and PET's pattern weights need a backbone with a trained masked-LM head
(``--backbone``: a Hugging Face MLM checkpoint, or the embedded MiniLM after ``tailtune adapt-lm``; the
MiniLM as shipped has none, so its prompt zero-shot scores would say nothing; its zero-shot is the embedding
method, ``zero-shot-emb``). Prompt-based fine-tuning and
demonstrations also run on ``--backbone default`` (the shipped MiniLM: the [MASK] transform starts
random, the word embeddings are the decoder), as the issue-4 grid does.

One JSON line per (set, method, seed, backbone) in ``benchmarks/results/prompting/fewshot.jsonl``, with
accuracy, macro-F1, the training wall time (texts to a classifier ready to predict) and what a search
found. Finished rows are skipped, so a killed run
resumes.

    tailtune adapt-lm --data ../shared/data/unlabeled/wikitext2-valid-test.txt --steps 300 --max-length 64 \\
        --lr 1e-4 --output runs/minilm-lm
    python benchmarks/prompting/fewshot.py --backbone runs/minilm-lm                    # everything, 5 seeds
    python benchmarks/prompting/fewshot.py --backbone runs/minilm-lm --only sst2 --methods prompt zero-shot-cal

Methods (the issue-4 few-shot recipe for every fine-tuning: lr 1e-4, batch 8, 20 epochs, best dev epoch):
- ``prompt``: prompt-based fine-tuning with the set's manual template and label words (LM-BFF's);
- ``demo-random`` / ``demo-similar``: + one demonstration per class (LM-BFF), drawn at random or among
  the most similar half of each class; max length 256; 16 demonstration sets averaged at prediction;
- ``auto-template``: ``search_templates`` (bank + MLM-filled connecting words, zero-shot dev accuracy),
  then prompt-based fine-tuning with the winner;
- ``auto-labelwords``: ``search_label_words`` (top-k words at [MASK] per class, re-ranked on dev), then
  prompt-based fine-tuning with them;
- ``pet`` / ``ipet``: three patterns (the manual one and two more), one prompt model each, weighted by
  zero-shot dev accuracy, distilled into the default classifier (``auto`` on the embedded MiniLM, which
  needs no MLM head; ``--pet-final-backbone`` changes it) on unlabelled texts of the set's classic
  training data (minus anything in its test set; ``--unlabeled N`` of them; for TREC, which has no classic
  folder here, the TREC-50 training questions: the same 5,452 questions, whose labels are not read);
  ``pet-mlm`` adds PET's auxiliary masked-LM loss on the same unlabelled texts (``--mlm-weight``,
  PET's 1e-4); ``pet-uniform`` averages the pattern models' scores with equal weights (PET's plain mean);
  ``ipet`` adds ``--generations`` iPET generations, each pattern model trained for generation 0's
  steps (PET's reference); ``ipet-epochs`` trains them for generation 0's epochs over the grown sets instead (the
  earlier iPET, whose rows carry this name);
- ``zero-shot`` / ``zero-shot-cal``: the manual prompt with no training, without and with contextual
  calibration (a content-free input);
- ``zero-shot-emb`` / ``zero-shot-emb-cal``: the embedding method (any encoder: run it with ``--backbone default``,
  the shipped MiniLM, whose zero-shot this is), each label described by the same manual prompt without the text
  ("It was great ."), without and with the same calibration.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
import random
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "peers"))

from multitask_zeroshot import EXTRA_TEMPLATES, TASKS  # noqa: E402
from quality import FEWSHOT, KSHOT, load, read_jsonl  # noqa: E402

TREC = ("{mask} : {text}", {"0": "Description", "1": "Entity", "2": "Expression", "3": "Human", "4": "Location",
                            "5": "Number"})
# the long-tail K-shot subsets: the long-tail grid's templates (benchmarks/longtail.yaml), label names as words
LONGTAIL_TEMPLATES = {"r52": "{text} This is {mask} news .", "trec50": "{text} The question is about {mask} ."}
# PET's two further patterns per source (the 16-shot sets use multitask_zeroshot.EXTRA_TEMPLATES)
PET_EXTRA = {"r52": ["{mask} news : {text}", "{text} The topic is {mask} ."],
             "trec50": ["{mask} : {text}", "{text} This question asks for {mask} ."],
             "trec": ["{text} The question asks for {mask} .", "{text} The answer is {mask} ."]}
# 16-shot sets without a classic folder: where their unlabelled pool comes from (a long-tail set's training texts)
POOL_FROM = {"trec": "trec50"}
PROMPTS = {**{t: (TASKS[t][3], TASKS[t][4]) for t in TASKS}, "trec": TREC,
           **{k: (LONGTAIL_TEMPLATES[src], None) for k, (src, _) in KSHOT.items()}}
METHODS = ["zero-shot", "zero-shot-cal", "zero-shot-emb", "zero-shot-emb-cal", "prompt", "demo-random", "demo-similar", "auto-template", "auto-labelwords",
           "pet", "pet-mlm", "pet-uniform", "ipet", "ipet-epochs"]
# the iPET methods -> how long each generation trains (run_pet's generation_budget)
IPET_BUDGET = {"ipet": "steps", "ipet-epochs": "epochs"}


def train_config(seed: int, epochs: float = 20.0):
    import tailtune as tt
    return tt.TrainConfig(epochs=epochs, batch_size=8, lr=1e-4, seed=seed, progress=False, eval_batch_size=128)


def unlabeled_pool(data_dir: Path, name: str, train, dev, test, n: int, seed: int) -> list[str]:
    """Up to ``n`` unlabelled texts: the set's classic training data minus its test set (16-shot sets), or the
    rest of the long-tail training set, minus the K-shot train and dev texts and the test set (K-shot sets)."""
    import tailtune as tt
    seen = set(test.texts) | set(train.texts) | set(dev.texts)
    if name in KSHOT:
        full, *_ = load(data_dir, KSHOT[name][0], seed)
        source = list(full.texts)
    elif name in TASKS:
        folder, file = TASKS[name][0], TASKS[name][1]
        source = list(tt.read_dataset(data_dir / "classic" / folder / file).texts)
    elif name in POOL_FROM:
        source = list(tt.read_dataset(data_dir / "longtail" / POOL_FROM[name] / "train.tsv").texts)
    else:
        return []
    texts = [t for t in dict.fromkeys(source) if t not in seen]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def prompt_descriptions(template: str, words: dict | None, labels: list[str]) -> dict[str, str]:
    """The embedding method's label descriptions from the same manual prompt: the template without the text, the
    label word at the mask ("{text} It was {mask} ." -> "It was great ."), label names where there are no words."""
    from tailtune.zeroshot import describe
    rendered = " ".join(template.replace("{text}", "").split()).replace("{mask}", "{label}")
    return {y: describe((words or {}).get(y) or y, rendered) for y in labels}


def run(method: str, name: str, train, dev, test, seed: int, backbone: str, a) -> dict | None:
    import tailtune as tt
    template, words = PROMPTS[name]
    labels = sorted(set(train.labels))
    found: dict = {}
    t0 = time.perf_counter()
    if method.startswith("zero-shot"):
        from tailtune.zeroshot import ZeroShotClassifier
        how = ({"method": "embedding", "descriptions": prompt_descriptions(template, words, labels)}
               if method.startswith("zero-shot-emb") else {"method": "prompt", "template": template, "verbalizer": words})
        zs = ZeroShotClassifier(labels, backbone, calibrate=method.endswith("-cal"), max_length=a.max_length, **how)
        found = {k: v for k, v in how.items() if k == "descriptions"}
        seconds = time.perf_counter() - t0
        pred = zs.predict(list(test.texts))
        return {"predictions": pred, "train_seconds": seconds, "found": found}
    kw: dict = {"template": template, "verbalizer": words, "max_length": a.max_length}
    if method.startswith("demo-"):
        kw.update(input_format="demonstrations", demo_selection=method[5:], max_length=a.demo_max_length)
    elif method == "auto-template":
        from tailtune.templates import search_templates
        result = search_templates(train, dev, backbone, verbalizer=words, max_length=a.max_length)
        kw["template"] = found["template"] = result["template"]
    elif method == "auto-labelwords":
        from tailtune.labelwords import search_label_words
        result = search_label_words(train, dev, backbone, template=template, max_length=a.max_length)
        kw["verbalizer"] = found["verbalizer"] = result["verbalizer"]
    elif method in ("pet", "pet-mlm", "pet-uniform", *IPET_BUDGET):
        from tailtune.pet import Pattern, run_pet
        pool = unlabeled_pool(Path(a.data_dir), name, train, dev, test, a.unlabeled, seed)
        if not pool:
            return None
        extra = PET_EXTRA[KSHOT[name][0]] if name in KSHOT else PET_EXTRA.get(name, EXTRA_TEMPLATES)
        patterns = [Pattern(t, words) for t in (template, *extra)]
        out = run_pet(train, dev, pool, patterns, backbone, train_config=train_config(seed, a.epochs),
                      max_length=a.max_length, generations=a.generations if method in IPET_BUDGET else 0,
                      generation_budget=IPET_BUDGET.get(method, "steps"),
                      mlm_weight=a.mlm_weight if method == "pet-mlm" else 0.0, final_backbone=a.pet_final_backbone,
                      pattern_weights="uniform" if method == "pet-uniform" else "zero-shot",
                      final_train_config=tt.preset_train_config("auto", seed=seed, progress=False), log=lambda s: None)
        seconds = time.perf_counter() - t0
        found = {"patterns": out["patterns"], "ensemble_dev_accuracy": out["ensemble_dev_accuracy"],
                 "unlabeled": len(pool), "final_backbone": a.pet_final_backbone, "mlm_weight": out["mlm_weight"],
                 "pattern_weights": out["pattern_weights"],
                 **{k: out[k] for k in ("generations", "generation_budget") if k in out}}
        return {"predictions": predict(out["classifier"], test, a), "train_seconds": seconds, "found": found}
    clf = tt.TailtuneClassifier("prompt", backbone, train_config=train_config(seed, a.epochs), **kw)
    clf.fit(train, dev=dev)
    seconds = time.perf_counter() - t0
    return {"predictions": predict(clf, test, a), "train_seconds": seconds, "found": found}


def predict(clf, test, a) -> list:
    """The test predictions (not timed: ``train_seconds`` ends before them), with ``--compile`` through the
    compiled encoder, which gives the eager scores within 1e-5 (``tests/test_compile.py``) in about half the time."""
    if a.compile:
        clf.set_compile()
    return clf.predict(list(test.texts))


def main() -> None:
    from tailtune.artefacts import jsonable
    from tailtune.experiment import append_line
    from tailtune.metrics import long_tail_report
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--backbone", required=True, help="a backbone with a trained masked-LM head (or 'default' for "
                   "the fine-tuning methods)")
    p.add_argument("--only", nargs="*", default=list(FEWSHOT), help="sets (default: the seven 16-shot sets; also r52-k8, trec50-k32, ...: the long-tail K-shot subsets, "
                   "whose unlabelled pool is the rest of the training set)")
    p.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42, 87, 100])
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--demo-max-length", type=int, default=256)
    p.add_argument("--unlabeled", type=int, default=1000, help="unlabelled texts for PET / iPET")
    p.add_argument("--generations", type=int, default=2, help="iPET generations")
    p.add_argument("--mlm-weight", type=float, default=1e-4, help="pet-mlm's auxiliary MLM loss weight (PET's: 1e-4)")
    p.add_argument("--pet-final-backbone", default="default",
                   help="backbone of PET's distilled `auto` classifier (default: the embedded MiniLM, the default "
                   "classifier's; the pattern models use --backbone)")
    p.add_argument("--epochs", type=float, default=20.0, help="epochs of every prompt model (smoke runs: fewer)")
    p.add_argument("--limit-test", type=int, default=None, help="score only the first N test texts (smoke runs)")
    p.add_argument("--compile", action="store_true", help="predict the test set through torch.compile (the "
                   "demonstration methods spend most of a run there: 16 demonstration sets per text); the "
                   "training time reported is unaffected")
    p.add_argument("--out", default="benchmarks/results/prompting/fewshot.jsonl")
    a = p.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["dataset"], r["method"], r["seed"], r["backbone"]) for r in read_jsonl(out)}
    for name in a.only:
        for seed in a.seeds:
            train, dev, test, length, theta, _ = load(Path(a.data_dir), name, seed)
            # the K-shot subsets keep the long-tail protocol's length (R52 48, TREC-50 64)
            opts = argparse.Namespace(**{**vars(a), "max_length": length}) if name in KSHOT else a
            if a.limit_test:
                test = test.subset(list(range(min(a.limit_test, len(test)))))
            for method in a.methods:
                if (name, method, seed, a.backbone) in done:
                    continue
                print(f"{name} {method} seed {seed}: {len(train)} train / {len(dev)} dev / {len(test)} test",
                      flush=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = run(method, name, train, dev, test, seed, a.backbone, opts)
                if r is None:
                    print("    skipped: no unlabelled texts for this set", flush=True)
                    continue
                rep = long_tail_report(test.labels, r["predictions"], theta, dict(Counter(train.labels)))
                row = {"dataset": name, "method": method, "seed": seed, "backbone": a.backbone,
                       "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"], "tail_f1": rep["tail_f1"],
                       "n_train": len(train),
                       "n_dev": len(dev), "n_test": len(test), "train_seconds": r["train_seconds"],
                       "found": r["found"], "compiled_test": a.compile}
                print(f"    accuracy {row['accuracy']:.4f} macro-F1 {row['macro_f1']:.4f} "
                      f"({row['train_seconds']:.0f} s)", flush=True)
                append_line(out, json.dumps(jsonable(row)))


if __name__ == "__main__":
    main()
