import math

import pytest

from tailtune.metrics import export_weight_norms, long_tail_report, weight_norms


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


def test_no_head_class_gives_nan_head_f1():
    r = long_tail_report(["a"] * 9 + ["b"], ["a"] * 10, theta=0.5)
    assert math.isnan(r["head_f1"]) and r["n_head"] == 0


def test_weight_norm_export(tmp_path):
    rows = weight_norms(["a", "b", "c"], [1.0, 2.0, 3.0], ["b", "b", "a", "c", "c", "c"])
    assert [r["label"] for r in rows] == ["c", "b", "a"]
    export_weight_norms(rows, tmp_path)
    assert (tmp_path / "weight_norms.png").stat().st_size > 1000
    assert "c,3,3.0" in (tmp_path / "weight_norms.csv").read_text()
