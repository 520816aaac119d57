"""tailtune's default against what users pick instead, side by side on the same backbone, splits and seeds.

    pip install -e ".[peers]"
    python benchmarks/peers/quality.py --data-dir ../shared/data             # every set, method and seed
    python benchmarks/peers/quality.py --only trec50 sst2 --methods auto lr-balanced
    python benchmarks/peers/table.py                                         # -> table.md, README table

Sets (the default MiniLM, a 2-core CPU, fp32):
- ``r52``, ``trec50``: the long-tail protocol (R52 max length 48 with its own dev split; TREC-50 max
  length 64 with a stratified 10 % dev split carved with the run's seed, duplicates of training texts
  left out); macro-F1 and tail-F1 on the test sets.
- ``sst2 sst5 mr cr mpqa subj trec``: LM-BFF's 16-shot splits (16 per class for train and for dev), full
  test sets, max length 64 (128 for the longer MR / CR / Subj / MPQA reviews is not needed: 64 covers
  most); accuracy.
- ``r52-k8 r52-k32 trec50-k8 trec50-k32``: K examples per class drawn from the training set (all of a
  class with fewer), dev: up to K more per class from the rest, the full test set.

Every method sees the same train split (peers do not use dev; tailtune uses it to pick its best
epoch). Results: one JSON line per (set, method, seed) in ``benchmarks/results/quality/results.jsonl``,
with the wall time of training (from texts to a classifier ready to predict; test prediction excluded).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

LONGTAIL = {"r52": ("longtail/r52", 48, 0.55), "trec50": ("longtail/trec50", 64, 0.65)}
FEWSHOT = {"sst2": ("SST-2", "tsv", 2), "sst5": ("sst-5", "csv", 5), "mr": ("mr", "csv", 2), "cr": ("cr", "csv", 2),
           "mpqa": ("mpqa", "csv", 2), "subj": ("subj", "csv", 2), "trec": ("trec", "csv", 6)}
KSHOT = {f"{name}-k{k}": (name, k) for name in LONGTAIL for k in (8, 32)}
# held out: long-tailed versions of classic sets on which no default was chosen (a check on new data). The training
# split is subsampled to an exponential profile, the largest class n_max texts and the smallest n_max / ratio (the
# CIFAR-LT protocol of the long-tail literature; which class is the largest is drawn per seed); 10 % of it is carved
# off as dev; the classic test split is kept as it is.


class HeldOut(NamedTuple):
    folder: str
    max_length: int
    theta: float
    n_max: int
    ratio: float  # imbalance: the largest class's count over the smallest's (1: the split as it is)
    dev: str  # "carved" (10 % of the training split: the training distribution) or "classic" (the same training
    # split, with the set's own dev split as dev: the test distribution)


HELDOUT = {"sst5-lt": HeldOut("classic/sst5", 64, 0.65, 1000, 100, "carved"),
           "sst5-lt-cdev": HeldOut("classic/sst5", 64, 0.65, 1000, 100, "classic"),
           "sst5-lt10": HeldOut("classic/sst5", 64, 0.65, 1000, 10, "carved"),  # a milder tail (imbalance 10)
           "sst2-lt20": HeldOut("classic/sst2", 64, 0.65, 1000, 20, "carved"),  # binary: 1,000 against 50
           # the whole training split, as it is (no class above n_max, ratio 1): plenty of examples per class, the
           # regime where plain fine-tuning is the peer to beat and where `auto`'s 10 epochs cost the most
           "sst2-full": HeldOut("classic/sst2", 64, 0.65, 10 ** 6, 1, "carved"),  # 6,920 texts, 2 classes
           "sst5-full": HeldOut("classic/sst5", 64, 0.65, 10 ** 6, 1, "carved"),  # 8,544 texts, 5 classes
           # two tasks no default was read from, drawn from a full set that ships as one all.tsv (the pool: all.tsv
           # minus LM-BFF's test set, which is the test set, as more_splits.py draws): objectivity and the polarity
           # of short phrases, binary, 1,000 against 50
           "subj-lt20": HeldOut("classic/subj", 64, 0.65, 1000, 20, "carved"),
           "mpqa-lt20": HeldOut("classic/mpqa", 64, 0.65, 1000, 20, "carved")}
SETS = [*LONGTAIL, *FEWSHOT, *KSHOT, *HELDOUT]
# every method's label: the peer table's row names (table.py) and what each row ran, in one place
LABELS = {
    "auto": "tailtune default (`auto`)",
    "auto-prev": "`auto-prev`, the default before the current one: early stopping counting evaluations before its "
                 "floor towards its patience, no LayerNorm before the head",
    "auto-b16": "`auto` with the long-tail paper's body lr 1e-4 and batch 16 (`--lr 1e-4 --batch-size 16`; not "
                "adopted)",
    "auto-plain": "`auto` without its contrastive stage (`--stages none`)",
    "auto-contrastive": "the fine-tuning recipe with the contrastive stage forced (`--contrastive-below 0`)",
    "auto-long": "the 5-epoch recipe without early stopping (`--patience none`)",
    "auto-distinct": "the fine-tuning recipe with pairs capped at the distinct pairs (`--contrastive-distinct`)",
    "auto-distinct-ho": "`auto` with its pairs capped at the distinct pairs (`--contrastive-distinct`: SetFit 1.x's "
                        "count; the head then trains alone, as in `auto`)",
    "auto-iter40": "`auto` with twice its pairs (`--contrastive-iterations 40`)",
    "auto-la": "`auto` with post-hoc logit adjustment at τ = 1, the balanced-error rule (`--adjust-tau 1`)",
    "auto-nola": "`auto-prev` before its post-hoc logit adjustment (`--calibration none`; the default two versions "
                 "back)",
    "auto-5ep": "the 5-epoch recipe (an earlier `auto`: early stopping from the first evaluation)",
    "auto-supcon": "`auto` with the supervised contrastive loss in its contrastive stage (`--contrastive-loss "
                   "supcon`, temperature 0.07; not adopted)",
    "auto-supcon-t03": "`auto-supcon` at temperature 0.3 (`--contrastive-temperature 0.3`; not adopted)",
    "auto-read-once": "the fine-tuning recipe reading each distinct text of a pair batch once (`--contrastive-read-"
                      "once`)",
    "auto-nostop": "`auto` without early stopping (`--patience none`; all 10 epochs)",
    "auto-3ep": "`auto` trained 3 epochs, the usual fine-tuning schedule and the HF Trainer's (`--epochs 3`)",
    "auto-finetune": "the fine-tuning recipe: `auto` before its head-only training, everything fine-tuned after the "
                     "contrastive stage (`--contrastive-head-only-below 0`)",
    "auto-head-only": "`auto` training only the head after its contrastive stage at any size (`--contrastive-head-"
                      "only-below 64`)",
    "auto-ln": "`auto` with a fresh LayerNorm before its cosine head at any size (`--layer-norm fresh`; `auto` has "
               "it from 64 examples per class)",
    "auto-desc": "`auto` + each label's description as 4 training examples (`--descriptions`; the manual prompt "
                 "without the text, \"It was great .\"; extra input, which the \"+ the same descriptions\" peer rows"
                 " get too)",
    "auto-desc-finetune": "`auto` + the descriptions, fine-tuning everything after its contrastive stage "
                          "(`--contrastive-head-only-below 0`; what `--descriptions` did until the bound counted "
                          "only observed examples)",
    "auto-desc-obs": "`auto` + the descriptions, kept out of its contrastive stage's pairs (`--contrastive-pairs "
                     "observed`; they join the head's training only)",
    "lr-balanced-desc": "embeddings + LogisticRegression (balanced) + the same descriptions as training examples",
    "setfit-desc": "SetFit + the same descriptions as training examples (4 copies; its `get_templated_dataset` makes"
                   " 2)",
    "auto-names": "the previous `auto` (`auto-prev`) + each label's name as 4 training examples (`--description-"
                  "template '{label}'`; not adopted: lower wherever its contrastive stage runs)",
    "auto-ln-names": "the current `auto` + the label names where it fine-tunes with a LayerNorm (`--description-"
                     "template '{label}' --layer-norm fresh`)",
    "auto-wa": "`auto` keeping an average of its weights (`--weight-average 0.1`: an exponential moving average over"
               " a tenth of the steps; not adopted)",
    "auto-names-obs": "`auto` + the label names, kept out of its contrastive stage's pairs (`--contrastive-pairs "
                      "observed`)",
    "lr-balanced-names": "embeddings + LogisticRegression (balanced) + the same label names as training examples",
    "prompt": "tailtune `prompt` (paper protocol)",
    "cls": "tailtune `cls` (few-shot protocol)",
    "lr-balanced": "embeddings + LogisticRegression (balanced)",
    "lr": "embeddings + LogisticRegression",
    "setfit": "SetFit",
    "setfit-iter20": "SetFit with `num_iterations=20` (1,280 pairs on a 16-shot binary set, as `auto` draws; not its"
                     " default)",
    "hf-trainer": "HF Trainer + AutoModelForSequenceClassification",
    "auto-paper": "`auto` with the long-tail paper's schedule: body lr 1e-4, batch 16, all 10 epochs (`--lr 1e-4 "
                  "--batch-size 16 --patience none`)",
    "auto-lr": "`auto` with body lr 1e-4 (`--lr 1e-4`)",
    "auto-b16-nola": "auto-b16 without the post-hoc logit adjustment (`--lr 1e-4 --batch-size 16 --calibration none`)",
    "auto-ln-b16": "auto-ln with the long-tail paper's lr and batch (`--layer-norm fresh --lr 1e-4 --batch-size 16`)",
    "auto-ln-nostop": "auto-ln without early stopping (`--layer-norm fresh --patience none`; all 10 epochs)",
    "auto-ln-b16-cls": "auto-ln-b16 reading [CLS] instead of the backbone's pooling (`--readout cls`)",
    "auto-ln-b16-mlp": "auto-ln-b16 with cls-ln's head: a tanh MLP with a LayerNorm (`--head mlp`)",
    "auto-ln-b16-cls-mlp": "auto-ln-b16 with cls-ln's readout and head: cls-ln under auto's recipe (`--readout cls "
                           "--head mlp`)",
    "auto-cls-mlp": "`auto` reading [CLS] into a tanh MLP head, the layout of the `Trainer`'s model (`--readout cls "
                    "--head mlp`; its dense layer fresh, not the checkpoint's pooler; `auto`'s LayerNorm before the "
                    "output layer; not adopted)",
    "auto-b16-3ep": "`auto` with the `Trainer`'s batch and epochs (`--batch-size 16 --epochs 3`; not adopted)",
    "auto-selacc": "`auto` keeping the checkpoint with the best dev accuracy, and stopping on it (`--select-metric "
                   "accuracy`)",
    "auto-last": "`auto` keeping its last step, without early stopping (`--select-metric last`)",
    "auto-lld": "`auto` with layer-wise learning-rate decay 0.9 (`--layer-lr-decay 0.9`: each layer of the body at 0.9 "
                "x the rate of the one above; not adopted)",
    "auto-memory": "`auto` with a memory of its training texts at a fixed weight (`--memory-weight 0.5`: the "
                   "cosine head mixes each class's nearest training text into its score; today's default chooses the "
                   "weight on dev)",
    "auto-no-memory": "`auto` without its memory of the training texts (`--stages contrastive`: the default before "
                      "the memory)",
    "prompt-10ep": "tailtune `prompt` with the paper's 10 epochs (lr 1e-4, batch 16) at the set's length"}
# a paper preset run with the long-tail paper's own schedule (10 epochs, lr 1e-4, batch 16) at the set's length, where
# its plain row runs the scaled-down CPU protocol (2 or 3 epochs) -> the preset
PAPER_SCHEDULE = {"prompt-10ep": "prompt"}
LN = {"layer_norm": "fresh"}  # the cosine head's LayerNorm (auto-ln and its variants)
AUTO_VARIANTS = {"auto": {}, "auto-plain": {"stages": []},
                 "auto-contrastive": {"contrastive_below": 0, "contrastive_head_only_below": 0},
                 "auto-long": {"contrastive_head_only_below": 0}, "auto-5ep": {"contrastive_head_only_below": 0},
                 "auto-distinct": {"contrastive_distinct": True, "contrastive_head_only_below": 0},
                 "auto-distinct-ho": {"contrastive_distinct": True}, "auto-iter40": {"contrastive_iterations": 40},
                 "auto-supcon": {"contrastive_loss": "supcon"},
                 "auto-supcon-t03": {"contrastive_loss": "supcon", "contrastive_temperature": 0.3},
                 "auto-read-once": {"contrastive_read_once": True, "contrastive_head_only_below": 0},
                 "auto-nostop": {}, "auto-3ep": {}, "auto-finetune": {"contrastive_head_only_below": 0},
                 "auto-head-only": {"contrastive_head_only_below": 64}, "auto-la": {"adjust_tau": 1.0, "adjust_tau_from_dev": False},
                 "auto-nola": {"calibration": "none"}, "auto-paper": {}, "auto-lr": {}, "auto-b16": {},
                 "auto-b16-nola": {"calibration": "none"}, "auto-ln": LN, "auto-ln-b16": LN, "auto-ln-nostop": LN,
                 "auto-ln-b16-cls": {**LN, "readout": "cls"}, "auto-ln-b16-mlp": {**LN, "head": "mlp"},
                 "auto-ln-b16-cls-mlp": {**LN, "readout": "cls", "head": "mlp"}, "auto-desc": {},
                 "auto-desc-finetune": {"contrastive_head_only_below": 0}, "auto-names": {},
                 "auto-names-obs": {"contrastive_pairs": "observed"}, "auto-desc-obs": {"contrastive_pairs": "observed"},
                 "auto-ln-names": LN, "auto-wa": {}, "auto-selacc": {}, "auto-last": {},
                 "auto-cls-mlp": {"readout": "cls", "head": "mlp"}, "auto-b16-3ep": {}, "auto-lld": {},
                 "auto-memory": {"stages": ("contrastive", "memory"), "memory_weight": 0.5},
                 "auto-no-memory": {"stages": ("contrastive",)}}
# variants that fit with each label's description among the training examples (fit's descriptions=, 4 copies
# each): the 16-shot sets' manual prompt without the text, "It was great ." (fewshot.prompt_descriptions)
DESCRIBED = {"auto-desc", "auto-desc-finetune", "auto-desc-obs", "lr-balanced-desc", "setfit-desc"}  # (a peer's: the same texts added to its training set)
# variants that fit with each label's *name* as its description (--description-template '{label}'): the one
# description every dataset has, where its labels are words (R52's "copper", TREC-50's "NUM:date")
NAMED = {"auto-names", "auto-names-obs", "auto-ln-names", "lr-balanced-names", "setfit-names"}
DESCRIPTION_COPIES = 4
# TrainConfig overrides of a variant. Rows of auto-plain, auto-contrastive, auto-long and auto-distinct were
# measured with the 5-epoch recipe (auto-5ep, the default until 10 epochs with a stopping floor replaced it).
# Every variant measured before `auto` trained only the head after its contrastive stage (auto-finetune: the
# recipe until then) sets contrastive_head_only_below=0, so it re-runs as measured; auto-head-only trains only the
# head wherever the stage runs (its rows were measured with the flag contrastive_head_only, since replaced by the
# threshold)
PAPER_LR_BATCH = {"lr": 1e-4, "batch_size": 16}  # the long-tail paper's body lr and batch
AUTO_TRAIN = {"auto-long": {"epochs": 5.0, "patience": None, "patience_from": 0.0},
              "auto-5ep": {"epochs": 5.0, "patience_from": 0.0}, "auto-nostop": {"patience": None},
              "auto-3ep": {"epochs": 3.0}, "auto-b16-3ep": {"batch_size": 16, "epochs": 3.0},
              "auto-paper": {**PAPER_LR_BATCH, "patience": None}, "auto-lr": {"lr": 1e-4},
              "auto-b16": PAPER_LR_BATCH, "auto-b16-nola": PAPER_LR_BATCH,
              "auto-ln-b16": PAPER_LR_BATCH, "auto-ln-nostop": {"patience": None}, "auto-ln-b16-cls": PAPER_LR_BATCH,
              "auto-ln-b16-mlp": PAPER_LR_BATCH, "auto-ln-b16-cls-mlp": PAPER_LR_BATCH, "auto-wa": {"weight_average": 0.1},
              "auto-selacc": {"select_metric": "accuracy"}, "auto-last": {"select_metric": "last"},
              "auto-lld": {"layer_lr_decay": 0.9}}
PEER_NAMES = ["lr-balanced", "lr", "setfit", "hf-trainer"]
# the methods that are tailtune (the rest are peers): `auto` and its variants, and the paper presets
TAILTUNE = {*AUTO_VARIANTS, *PAPER_SCHEDULE, "prompt", "cls"}


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a results file (none when it does not exist yet; blank lines skipped)."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def by_dataset(rows: list[dict]) -> dict[str, list[dict]]:
    """Result rows grouped by set, in the order the sets first appear."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["dataset"], []).append(r)
    return out


def indices_by_class(labels: list[str]) -> dict[str, list[int]]:
    """Each label's row indices, in row order (a fresh list per class, free to shuffle)."""
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    return by_class


def dev_carved(data_dir: Path, name: str) -> bool:
    """Is this set's dev split carved from its training split (as `tailtune train` carves one when given none)?"""
    if name in HELDOUT:
        return HELDOUT[name].dev == "carved"
    return name in LONGTAIL and not (data_dir / LONGTAIL[name][0] / "dev.tsv").is_file()


def classic_pool(data_dir: Path, folder: str):
    """(pool, test) of a classic set: its train and test splits as published, or for a set that ships as one
    ``all.tsv``, LM-BFF's test set of it and the rest of ``all.tsv``. A text leaves that pool if it matches a test text
    under either of more_splits.py's keys: whitespace normalised, or ASCII letters and digits only, which also catches
    the copies that differ from a test text only in encoding (19 of Subj's pool, 2 of MPQA's). Published splits are
    left as they are: their overlaps are the dataset's, and every method sees the same ones."""
    import tailtune as tt
    base = data_dir / folder
    if not (base / "all.tsv").is_file():
        return tuple(tt.read_dataset(base / f"{split}.tsv") for split in ("train", "test"))
    from more_splits import FOLDERS, _letters, _norm, test_keys
    test = tt.read_dataset(data_dir / "fewshot" / "lmbff-16shot" / FOLDERS[base.name] / "16-13" / "test.csv",
                           header=False, columns=["label", "text"])
    full = tt.read_dataset(base / "all.tsv")
    held, held_letters = test_keys(test.texts)
    return full.subset([i for i, t in enumerate(full.texts)
                        if _norm(t) not in held and _letters(t) not in held_letters]), test


def load(data_dir: Path, name: str, seed: int, carve: bool = True):
    """(train, dev, test, max_length, theta, few-shot?) of a set for a seed. ``carve=False``: a set whose dev split
    is carved from its training split comes uncarved, with an empty dev set, for tailtune's ``fit`` to carve the very
    same split (same seed and fraction) itself, as `tailtune train` does without --dev, and to know it did."""
    import tailtune as tt
    if name in LONGTAIL:
        folder, max_length, theta = LONGTAIL[name]
        train = tt.read_dataset(data_dir / folder / "train.tsv")
        test = tt.read_dataset(data_dir / folder / "test.tsv")
        if not dev_carved(data_dir, name):
            dev = tt.read_dataset(data_dir / folder / "dev.tsv")
        elif not carve:
            dev = train.subset([])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train, dev = tt.stratified_split(train, 0.1, seed)
        return train, dev, test, max_length, theta, False
    if name in HELDOUT:
        folder, max_length, theta, n_max, ratio, _ = HELDOUT[name]
        pool, test = classic_pool(data_dir, folder)
        rng, by_class = random.Random(seed), indices_by_class(pool.labels)
        classes = sorted(by_class)
        rng.shuffle(classes)  # classes[0] is the largest
        picked = []
        for rank, y in enumerate(classes):
            idx = by_class[y]
            rng.shuffle(idx)
            picked += idx[:round(n_max * ratio ** (-rank / max(1, len(classes) - 1)))]
        train = pool.subset(sorted(picked))
        if not dev_carved(data_dir, name):  # the set's own dev split
            return train, tt.read_dataset(data_dir / folder / "dev.tsv"), test, max_length, theta, False
        if not carve:
            return train, train.subset([]), test, max_length, theta, False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train, dev = tt.stratified_split(train, 0.1, seed)
        return train, dev, test, max_length, theta, False
    if name in FEWSHOT:
        folder, ext, _ = FEWSHOT[name]
        base = data_dir / "fewshot" / "lmbff-16shot" / folder / f"16-{seed}"
        kw = {"text_col": "sentence"} if ext == "tsv" else {"header": False, "columns": ["label", "text"]}
        read = lambda split: tt.read_dataset(base / f"{split}.{ext}", allow_empty=True, **kw)  # noqa: E731
        return read("train"), read("dev"), read("test"), 64, 0.65, True
    source, k = KSHOT[name]
    train, dev, test, max_length, theta, _ = load(data_dir, source, seed)
    pool = train  # K per class drawn from the training split only; test stays as it is
    rng, by_class = random.Random(seed), indices_by_class(pool.labels)
    tr, dv = [], []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        tr += idx[:k]
        dv += idx[k:2 * k]
    return pool.subset(sorted(tr)), pool.subset(sorted(dv)), test, max_length, theta, True


def fit_timed(clf, train, dev, **fit_kw):
    """Fit ``clf`` (dev: None when empty, so a carved set is carved by ``fit``) and return the training seconds."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(train, dev=dev if len(dev) else None, **fit_kw)
    return time.perf_counter() - t0


def auto_classifier(seed: int, max_length: int, theta: float, method: str = "auto", bf16: bool = False):
    """`auto` (or one of its AUTO_VARIANTS) as this benchmark configures it, not yet trained."""
    import tailtune as tt
    return tt.TailtuneClassifier("auto", max_length=max_length, theta=theta, **AUTO_VARIANTS[method],
                                 train_config=tt.preset_train_config("auto", seed=seed, progress=False, bf16=bf16,
                                                                     **AUTO_TRAIN.get(method, {})))


def set_descriptions(name: str, labels: list[str]) -> dict[str, str]:
    """Each label of a 16-shot set described by its manual prompt without the text (the prompting benchmark's)."""
    prompting = str(Path(__file__).resolve().parents[1] / "prompting")
    if prompting not in sys.path:  # (called once per run)
        sys.path.insert(0, prompting)
    from fewshot import PROMPTS, prompt_descriptions
    if name not in PROMPTS:
        raise SystemExit(f"{name}: no manual prompt to describe its labels with (sets: {', '.join(PROMPTS)})")
    return prompt_descriptions(*PROMPTS[name], labels)


def descriptions_for(method: str, name: str, labels: list[str]) -> dict[str, str] | None:
    """The label descriptions a variant trains with (None: none)."""
    if method in NAMED:
        from tailtune.zeroshot import read_descriptions
        return read_descriptions(labels, None, "{label}")
    return set_descriptions(name, labels) if method in DESCRIBED else None


def run_tailtune(method: str, train, dev, test, seed: int, max_length: int, theta: float, few: bool,
                 bf16: bool = False, name: str | None = None) -> dict:
    import tailtune as tt
    given = descriptions_for(method, name, sorted(set(train.labels)))
    fit_kw = {"descriptions": given, "description_copies": DESCRIPTION_COPIES} if given else {}
    if method in AUTO_VARIANTS:
        clf = auto_classifier(seed, max_length, theta, method, bf16)
    else:  # the best preset of the earlier tables, with its protocol (few-shot: lr 1e-4, 20 epochs, batch 8)
        preset, paper = PAPER_SCHEDULE.get(method, method), method in PAPER_SCHEDULE
        long = paper or (not few and preset == "prompt")
        epochs = 10 if paper else (2 if max_length == 48 else 3) if long else 20
        clf = tt.TailtuneClassifier(preset, max_length=max_length, theta=theta, train_config=tt.TrainConfig(
            epochs=epochs, batch_size=16 if long else 8, lr=1e-4, seed=seed, progress=False, eval_batch_size=128,
            bf16=bf16))
    lines: list[str] = []
    seconds = fit_timed(clf, train, dev, log=lines.append, **fit_kw)
    report = clf.evaluate(test)
    return {"report": report, "train_seconds": seconds, "epochs_run": clf.train_result_.epochs_run,
            "best_step": clf.train_result_.best_step, "steps": clf.train_result_.steps,
            "config": clf.config.to_dict(),  # and the options it chose from the training data (e.g. layer_norm)
            "fitted_options": clf.fitted_options_,
            # what was chosen on dev after training, as `train` prints it (the memory's λ with its seconds, the τ)
            "chosen_on_dev": [line for line in lines if line.startswith(("memory:", "logit adjustment:"))]}


def run_peer(method: str, train, dev, test, seed: int, max_length: int, theta: float, few: bool,
             bf16: bool = False, name: str | None = None) -> dict:
    from peers import PEERS
    from tailtune.metrics import long_tail_report
    from collections import Counter
    fitted_on = train
    given = descriptions_for(method, name, sorted(set(train.labels)))
    if given:  # the peer with the descriptions `auto-desc` / `auto-names` gets, as training examples alike
        from tailtune.data import with_descriptions
        fitted_on = with_descriptions(train, given, DESCRIPTION_COPIES)
        method = method.removesuffix("-desc").removesuffix("-names")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = PEERS[method](fitted_on, dev, test, seed, max_length, None, few)
    report = long_tail_report(test.labels, out["predictions"], theta, dict(Counter(train.labels)))
    return {"report": report, "train_seconds": out["train_seconds"], "notes": out.get("notes")}


def _device() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _threads() -> int:
    import torch
    return torch.get_num_threads()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="benchmarks/results/quality")
    p.add_argument("--only", nargs="*", default=None, help="sets (default: all)")
    p.add_argument("--methods", nargs="*", default=None, help="methods (default: auto, the best preset, the peers)")
    p.add_argument("--seeds", nargs="*", type=int, default=[13, 21, 42])
    p.add_argument("--max-length", type=int, default=None,
                   help="override every set's max length (the long-tail paper's full protocol: 256)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for tailtune's runs (on a GPU)")
    a = p.parse_args()
    if not Path(a.data_dir).is_dir():
        p.error(f"no data folder {a.data_dir}: pass --data-dir the folder that holds fewshot/, longtail/ and classic/")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["dataset"], r["method"], r["seed"]) for r in read_jsonl(results)}
    for name in a.only or SETS:
        few = name not in LONGTAIL
        methods = a.methods or ["auto", "cls" if name in FEWSHOT else "prompt", *PEER_NAMES]
        for seed in a.seeds:
            for method in methods:
                if (name, method, seed) in done:
                    continue
                train, dev, test, max_length, theta, few = load(Path(a.data_dir), name, seed)
                max_length = a.max_length or max_length
                print(f"{name} {method} seed {seed}: {len(train)} train / {len(dev)} dev / {len(test)} test", flush=True)
                if method in TAILTUNE:  # a carved dev split: tailtune carves the same one itself
                    r = run_tailtune(method, *load(Path(a.data_dir), name, seed, carve=False)[:2], test, seed,
                                     max_length, theta, few, a.bf16, name)
                else:
                    r = run_peer(method, train, dev, test, seed, max_length, theta, few, a.bf16, name)
                rep = r.pop("report")
                row = {"dataset": name, "method": method, "seed": seed,
                       **{k: rep[k] for k in ("accuracy", "macro_f1", "head_f1", "tail_f1", "many_f1", "medium_f1",
                                              "few_f1", "group_rule")},
                       "n_train": len(train), "n_dev": len(dev), "n_test": len(test), "max_length": max_length,
                       "device": _device(), "bf16": a.bf16 and method in TAILTUNE, "torch_threads": _threads(), **r}
                print(f"    acc {row['accuracy']:.4f} macro-F1 {row['macro_f1']:.4f} tail-F1 {row['tail_f1']:.4f} "
                      f"({row['train_seconds']:.0f} s)", flush=True)
                from tailtune.artefacts import jsonable
                from tailtune.experiment import append_line
                append_line(results, json.dumps(jsonable(row)))


if __name__ == "__main__":
    from tailtune.errors import TailtuneError
    try:
        main()
    except TailtuneError as e:  # a missing or malformed data file: one line, as the command line prints it
        raise SystemExit(f"error: {e}") from None
