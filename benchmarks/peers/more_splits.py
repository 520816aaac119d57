"""More 16-shot splits of an LM-BFF set, drawn the way LM-BFF drew its five, for seeds it did not publish.

LM-BFF's five seeds (13, 21, 42, 87, 100) leave a 16-shot set's mean with a standard error of 1 to 2 points,
too coarse to tell two methods apart that differ by less. This writes more splits of the same kind: for each
seed, 16 examples per class for train and 16 more for dev, drawn without replacement from the full set
(``classic/<set>/all.tsv``) minus LM-BFF's test set, which every split keeps as its test set. The output has
the published layout, so ``quality.py --data-dir OUT`` reads it:

    python benchmarks/peers/more_splits.py --set mr --seeds 1 2 3 4 5 6 7 8 9 10 --out /tmp/mr-splits
    python benchmarks/peers/quality.py --data-dir /tmp/mr-splits --only mr --methods auto setfit lr-balanced \\
        --seeds 1 2 3 4 5 6 7 8 9 10 --out /tmp/mr-more

Only the sets whose full data ship as one ``all.tsv`` (mr, cr, mpqa, subj) can be drawn this way. A few of
LM-BFF's test texts differ from their ``classic/`` copies in encoding and stay in the pool; the script warns when a
split draws one (none of the splits 1 to 10 of mr, mpqa and subj does; split 18 of mr does).
"""
from __future__ import annotations

import argparse
import csv
import random
from collections import defaultdict
from pathlib import Path

FOLDERS = {"mr": "mr", "cr": "cr", "mpqa": "mpqa", "subj": "subj"}
K = 16  # per class, for train and for dev: LM-BFF's, and the only K that quality.py reads


def _norm(text: str) -> str:
    return " ".join(text.split())


def _letters(text: str) -> str:
    """ASCII letters and digits only: LM-BFF's copies of a few texts differ from ``classic/`` in encoding
    ("…" for "...", "—" for "--"), which ``_norm`` does not see."""
    return "".join(c for c in text.lower() if c.isascii() and c.isalnum())


def test_keys(test_texts) -> tuple[set[str], set[str]]:
    """The test texts under both keys, ``_norm`` and ``_letters`` (a text of punctuation alone, "*", has an empty
    ``_letters`` key and matches nothing under it)."""
    texts = list(test_texts)
    return {_norm(t) for t in texts}, {_letters(t) for t in texts} - {""}


def read_all(path: Path) -> list[tuple[str, str]]:
    """(label, text) rows of a classic ``all.tsv`` (header ``text<TAB>label``, CSV quoting)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["label"], r["text"]) for r in rows]


def read_lmbff(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        return [(label, text) for label, text in csv.reader(f)]


def write_lmbff(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)


def draw(pool: list[tuple[str, str]], k: int, seed: int) -> tuple[list, list]:
    """K per class for train, the next K per class for dev, from a seeded shuffle of each class."""
    by_class: dict[str, list] = defaultdict(list)
    for row in pool:
        by_class[row[0]].append(row)
    rng, train, dev = random.Random(seed), [], []
    for label in sorted(by_class):
        rows = by_class[label][:]
        rng.shuffle(rows)
        train += rows[:k]
        dev += rows[k:2 * k]
    return train, dev


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", required=True, choices=sorted(FOLDERS), help="the LM-BFF set to draw more splits of")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="one split per seed (not 13, 21, 42, 87, 100)")
    p.add_argument("--data-dir", default="../shared/data",
                   help="the folder holding fewshot/lmbff-16shot/ and classic/ (default: ../shared/data)")
    p.add_argument("--out", required=True, help="where to write OUT/fewshot/lmbff-16shot/<set>/16-<seed>/")
    a = p.parse_args()
    data, folder = Path(a.data_dir), FOLDERS[a.set]
    published = data / "fewshot" / "lmbff-16shot" / folder
    for need in (published / "16-13" / "test.csv", data / "classic" / a.set / "all.tsv"):
        if not need.is_file():
            p.error(f"{need} not found: pass --data-dir the folder that holds fewshot/lmbff-16shot/ and classic/")
    clash = sorted(set(a.seeds) & {int(d.name.split("-")[1]) for d in published.glob("16-*")})
    if clash:
        p.error(f"seeds {clash} are LM-BFF's published splits: choose other seeds")
    test = read_lmbff(published / "16-13" / "test.csv")
    held, test_letters = test_keys(t for _, t in test)
    pool = [r for r in read_all(data / "classic" / a.set / "all.tsv") if _norm(r[1]) not in held]
    base = Path(a.out) / "fewshot" / "lmbff-16shot" / folder
    for seed in a.seeds:
        train, dev = draw(pool, K, seed)
        near = sum(_letters(t) in test_letters for _, t in train + dev)
        if near:  # the pool keeps the few test texts whose copies differ in encoding; say so if one was drawn
            print(f"warning: split {seed} holds {near} text(s) that match a test text up to punctuation and encoding")
        for split, rows in (("train", train), ("dev", dev), ("test", test)):
            write_lmbff(base / f"{K}-{seed}" / f"{split}.csv", rows)
    print(f"{a.set}: {len(pool)} texts outside LM-BFF's test set ({len(test)}); wrote {len(a.seeds)} split(s) "
          f"of {K} per class to {base}")


if __name__ == "__main__":
    main()
