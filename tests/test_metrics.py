import math

import pytest

from tailtune.metrics import export_weight_norms, format_report, long_tail_report, weight_norms


def test_long_tail_report():
    y_true = ["a"] * 6 + ["b"] * 3 + ["c"]
    y_pred = ["a"] * 6 + ["b", "b", "a"] + ["b"]
    r = long_tail_report(y_true, y_pred, theta=0.65)
    assert r["accuracy"] == pytest.approx(0.8)
    # a: p=6/7 r=1 f1=12/13; b: p=2/3 r=2/3 f1=2/3; c: 0
    f_a, f_b = 12 / 13, 2 / 3
    assert r["per_class"]["a"]["f1"] == pytest.approx(f_a)
    assert r["macro_f1"] == pytest.approx((f_a + f_b + 0) / 3)
    assert r["head_f1"] == pytest.approx(f_a)  # a holds 60% < 65%: head
    assert r["tail_f1"] == pytest.approx(f_b / 2)
    assert r["per_class"]["c"]["support"] == 1 and r["per_class"]["c"]["group"] == "tail"


def test_a_predicted_class_the_split_lacks_is_reported_beside_macro_f1():
    y_true = ["a"] * 4 + ["b"] * 2
    y_pred = ["a", "a", "a", "z", "b", "z"]  # z: a training class this split does not contain
    r = long_tail_report(y_true, y_pred, theta=0.65)
    # a: p=1 r=3/4 f1=6/7; b: p=1 r=1/2 f1=2/3; z: no gold text, F1 0 in scikit-learn's average
    f_a, f_b = 6 / 7, 2 / 3
    assert r["macro_f1"] == pytest.approx((f_a + f_b + 0) / 3)
    assert r["macro_f1_split_classes"] == pytest.approx((f_a + f_b) / 2)
    assert r["absent_predicted"] == {"z": 2}
    assert "macro-F1 counts 1 class this split does not contain but the model predicted (2 times; F1 0 each: z); " \
           "over the split's own 2 classes it is 0.7619" in format_report(r)
    full = long_tail_report(y_true, y_true)
    assert full["absent_predicted"] == {} and full["macro_f1_split_classes"] == full["macro_f1"] == 1.0
    assert "does not contain" not in format_report(full)
    one = format_report(long_tail_report(y_true, y_pred, theta=0.8))  # a (4 of 6) is head, b tail
    assert "(1 class)   tail-F1" in one and "(1 class)   θ=0.8" in one and "(1 classes)" not in one


def test_no_head_class_gives_nan_head_f1():
    r = long_tail_report(["a"] * 9 + ["b"], ["a"] * 10, theta=0.5)
    assert math.isnan(r["head_f1"]) and r["n_head"] == 0


def test_weight_norm_export(tmp_path):
    rows = weight_norms(["a", "b", "c"], [1.0, 2.0, 3.0], ["b", "b", "a", "c", "c", "c"])
    assert [r["label"] for r in rows] == ["c", "b", "a"]
    export_weight_norms(rows, tmp_path)
    assert (tmp_path / "weight_norms.png").stat().st_size > 1000
    assert "c,3,3.0" in (tmp_path / "weight_norms.csv").read_text()


def test_head_tail_from_training_counts_when_the_test_split_is_balanced():
    y_true = ["a", "b", "c", "d"] * 5  # balanced: its own counts say nothing about head and tail
    y_pred = ["a", "b", "c", "a"] * 5
    train = {"a": 120, "b": 60, "c": 10, "d": 5}
    r = long_tail_report(y_true, y_pred, theta=0.65, train_counts=train)
    assert r["group_rule"] == "train" and r["n_head"] == 1 and r["per_class"]["a"]["group"] == "head"
    assert (r["n_many"], r["n_medium"], r["n_few"]) == (1, 1, 2)
    assert r["many_f1"] == pytest.approx(r["per_class"]["a"]["f1"])
    assert r["few_f1"] == pytest.approx((r["per_class"]["c"]["f1"] + r["per_class"]["d"]["f1"]) / 2)
    split = long_tail_report(y_true, y_pred, theta=0.65, train_counts=train, groups="split")
    assert split["group_rule"] == "split" and split["n_head"] == 2  # equal counts: head by name alone (a, b)
    assert split["groups_by_name"] and not r["groups_by_name"]  # ... and the report says so
    assert "split by class name, not size" in format_report(split) and "by class name" not in format_report(r)
    imbalanced = long_tail_report(["a"] * 9 + ["b"], ["a"] * 10, 0.5, train_counts={"a": 5, "b": 50})
    assert imbalanced["group_rule"] == "split"  # an imbalanced split keeps the paper's rule
    assert math.isnan(long_tail_report(y_true, y_pred)["many_f1"])  # no training counts: no shot bands
