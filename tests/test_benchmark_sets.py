"""The held-out long-tailed sets of benchmarks/peers/quality.py, drawn from a classic set that ships as one all.tsv
(tiny files written here; no training)."""
import csv
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))

import quality


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A subj-like set: 60 texts per class in all.tsv, 10 of each of them (re-spaced) in LM-BFF's test split, and
    two more copies of test texts in all.tsv that differ from them only in encoding ("…" for "...")."""
    rows = [(f"text {y} number {i}", y) for y in ("0", "1") for i in range(60)]
    rows += [(f"text {y} number 0 …", y) for y in ("0", "1")]
    (tmp_path / "classic" / "subj").mkdir(parents=True)
    with (tmp_path / "classic" / "subj" / "all.tsv").open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["text", "label"])
        w.writerows(rows)
    test = [(y, "  " + t.replace(" ", "  ")) for t, y in rows[:120] if int(t.split()[-1]) < 10]
    test = [(y, t + " ...") if t.split() == ["text", y, "number", "0"] else (y, t) for y, t in test]
    folder = tmp_path / "fewshot" / "lmbff-16shot" / "subj" / "16-13"  # every LM-BFF seed shares its test set
    folder.mkdir(parents=True)
    with (folder / "test.csv").open("w", newline="") as f:
        csv.writer(f).writerows(test)
    return tmp_path


def test_the_pool_is_all_tsv_without_lmbffs_test_set_which_is_the_test_set(data_dir):
    pool, test = quality.classic_pool(data_dir, "classic/subj")
    assert len(test) == 20 and Counter(test.labels) == {"0": 10, "1": 10}
    assert len(pool) == 100  # the 20 test texts left out though their spacing differs, and the 2 copies in "…"
    assert not [t for t in pool.texts if "…" in t]
    assert not {" ".join(t.split()) for t in test.texts} & set(pool.texts)


def test_a_held_out_set_from_all_tsv_is_long_tailed_carved_and_disjoint_from_test(data_dir, monkeypatch):
    # the largest class 40 texts, the smallest 40 / 10 (which class is the largest is drawn by the seed)
    monkeypatch.setitem(quality.HELDOUT, "tiny-lt", quality.HeldOut("classic/subj", 64, 0.65, 40, 10, "carved"))
    train, dev, test, *_ = quality.load(data_dir, "tiny-lt", 13)
    assert sorted(Counter(train.labels + dev.labels).values()) == [4, 40]
    assert len(dev) and not set(dev.texts) & set(train.texts)
    assert len(test) == 20 and not {" ".join(t.split()) for t in test.texts} & set(train.texts + dev.texts)
    # uncarved for tailtune's fit, which carves the same dev split itself
    whole, empty, *_ = quality.load(data_dir, "tiny-lt", 13, carve=False)
    assert not len(empty) and sorted(whole.texts) == sorted(train.texts + dev.texts)
