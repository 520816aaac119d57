"""The checkpoint rules that benchmarks/peers/selection.py replays on recorded training runs (no training here)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "peers"))

import selection  # noqa: E402


def run(dev_f1: list[float], n_dev: int = 100, accuracy: float = 0.9) -> dict:
    """A recorded run of `auto`'s 10-evaluation schedule (100 steps each) with these dev macro-F1 scores."""
    return {"dataset": "x", "method": "auto", "seed": 1, "n_dev": n_dev, "steps": 100 * len(dev_f1),
            "evals": [{"step": 100 * (i + 1), "dev_macro_f1": f, "dev_accuracy": accuracy}
                      for i, f in enumerate(dev_f1)]}


def test_auto_stops_after_its_patience_from_the_floor_and_keeps_the_best():
    # best at evaluation 2; the floor is half the steps (500), so evaluations 3 and 4 do not count towards the
    # patience of 3: it stops after evaluation 7 (5, 6, 7 without a better one)
    r = run([0.5, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.9, 0.9, 0.9])
    assert selection._stop_point(r) == (1, 6)
    assert selection._stopped(r) == 1
    # counting evaluations before the floor (auto-prev's rule) it stops at evaluation 5
    assert selection._stop_point(r, from_floor=False) == (1, 4)
    # without a stop, the best of all and the last evaluation
    assert selection._stop_point(run([0.5, 0.6, 0.7, 0.8, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95])) == (9, 9)


def test_the_one_standard_error_rule_keeps_the_latest_checkpoint_dev_cannot_tell_from_the_best():
    # dev accuracy 0.9 on 100 texts: one standard error is 0.03
    r = run([0.5, 0.8, 0.85, 0.84, 0.82, 0.86, 0.83, 0.84, 0.85, 0.80])
    assert selection._stopped(r) == 5  # the best dev score, 0.86
    assert selection._latest_within_se(r) == 8  # 0.85 >= 0.86 - 0.03; the last (0.80) is outside
    # a large dev set shrinks the margin: only the best itself is within it
    assert selection._latest_within_se({**r, "n_dev": 100_000}) == 5
    # never past where auto stops: the best at evaluation 2, stopped after evaluation 7 (index 6)
    stopped = run([0.5, 0.8, 0.78, 0.7, 0.7, 0.7, 0.79, 0.8, 0.8, 0.8])
    assert selection._stop_point(stopped) == (1, 6)
    assert selection._latest_within_se(stopped) == 6


def test_the_smoothed_rule_ranks_an_evaluation_with_its_neighbours():
    # an isolated dev spike (0.95 at evaluation 1) loses to a plateau: the mean of 0.95 and 0.5 is 0.725, of 0.84,
    # 0.86 and 0.85 is 0.85; auto stops after evaluation 7, the third from its floor (evaluation 5)
    r = run([0.95, 0.5, 0.84, 0.86, 0.85, 0.6, 0.6, 0.6, 0.6, 0.6])
    assert selection._stop_point(r) == (0, 6)
    assert selection._best_smoothed(r) == 3
    # never past where auto stops: stopped after evaluation 7 (index 6), a later plateau is not seen
    late = run([0.5, 0.8, 0.78, 0.7, 0.7, 0.7, 0.79, 0.99, 0.99, 0.99])
    assert selection._stop_point(late) == (1, 6)
    assert selection._best_smoothed(late) == 2  # 0.8, 0.78 and 0.7 average 0.76; nothing up to the stop does better


def test_a_dev_size_falls_back_to_the_one_every_seed_of_the_set_shares(monkeypatch):
    rows = [{"dataset": "given", "method": "auto", "seed": 13, "n_dev": 617},
            {"dataset": "given", "method": "auto", "seed": 21, "n_dev": 617},
            {"dataset": "carved", "method": "auto", "seed": 13, "n_dev": 691},
            {"dataset": "carved", "method": "auto", "seed": 21, "n_dev": 690}]
    monkeypatch.setattr(selection, "read_jsonl", lambda path: rows)
    selection._auto_dev_sizes.cache_clear()
    try:
        assert selection._n_dev({"dataset": "given", "seed": 87}) == 617  # a seed quality.py did not run
        assert selection._n_dev({"dataset": "carved", "seed": 21}) == 690  # its own seed's split
        assert selection._n_dev({"dataset": "carved", "seed": 87}) is None  # carved per seed: no one size
        assert selection._n_dev({"dataset": "carved", "seed": 87, "n_dev": 700}) == 700  # a row's own first
    finally:
        selection._auto_dev_sizes.cache_clear()
