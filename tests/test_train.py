import math
import random

import pytest

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import tailtune as tt
from tailtune.loop import TrainConfig, run
from tailtune.training import length_grouped_batches


def _clf(backbone, seed, **train):
    return tt.TailtuneClassifier("cls", backbone, train_config=tt.TrainConfig(
        **{"epochs": 3, "batch_size": 4, "lr": 1e-3, "seed": seed, "progress": False, **train}))


def test_same_seed_same_metrics(tiny_bert, toy):
    texts, labels = toy
    a = _clf(tiny_bert, 5).fit(texts, labels)
    b = _clf(tiny_bert, 5).fit(texts, labels)
    c = _clf(tiny_bert, 6).fit(texts, labels)
    np.testing.assert_array_equal(a.decision_function(texts), b.decision_function(texts))
    assert a.train_result_.history == b.train_result_.history
    assert not np.array_equal(a.decision_function(texts), c.decision_function(texts))
    assert a.train_result_.peak_memory_mb > 50  # resident memory of a process with torch loaded


def test_early_stopping_and_best_checkpoint(tiny_bert, toy):
    texts, labels = toy
    clf = _clf(tiny_bert, 1, eval_every=1, patience=2)
    dev = tt.TextDataset(texts[:12], labels[:12])
    clf.fit(texts, labels, dev=dev)
    r = clf.train_result_
    evals = [h for h in r.history if "dev_macro_f1" in h]
    best = max(h["dev_macro_f1"] for h in evals)
    assert r.best_dev_macro_f1 == best
    # stopped once two evaluations in a row did not beat the best
    if r.steps < 27:
        assert [h["step"] for h in evals][-1] - r.best_step == 2
    # the restored parameters are the best ones: dev macro-F1 equals the best recorded
    assert clf.evaluate(dev)["macro_f1"] == best


def test_length_grouped_batches_cover_everything():
    lengths = [random.Random(0).randint(1, 100) for _ in range(1000)]
    batches = length_grouped_batches(lengths, 16, random.Random(0), group=4)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 30  # grouped: far below the ~95 of random batches


def test_early_stopping_waits_for_its_share_of_the_steps(tiny_bert, toy):
    texts, labels = toy
    dev = tt.TextDataset(texts[:12], labels[:12])
    free = _clf(tiny_bert, 1, eval_every=1, patience=1).fit(texts, labels, dev=dev).train_result_
    total = math.ceil(len(texts) / 4) * 3
    assert free.steps < total  # patience 1 stops this run early...
    late = _clf(tiny_bert, 1, eval_every=1, patience=1, patience_from=0.5).fit(texts, labels, dev=dev).train_result_
    assert late.steps >= total / 2 > free.steps or late.steps == free.steps >= total / 2
    never = _clf(tiny_bert, 1, eval_every=1, patience=1, patience_from=1.0).fit(texts, labels, dev=dev).train_result_
    assert never.steps == total  # ...and a floor of all the steps never stops it
    assert late.history[:free.steps] == free.history  # the same run up to where the free one stopped
    # evaluations before the floor do not count towards the patience: a run whose dev score peaked before the
    # floor stops `patience` evaluations past it, not at the floor on what dev said before it
    two = _clf(tiny_bert, 1, eval_every=1, patience=2, patience_from=0.9).fit(texts, labels, dev=dev).train_result_
    floor = math.ceil(0.9 * total)
    assert two.best_step < floor - 2  # peaked before the floor, with more than 2 evaluations between...
    assert two.steps == floor + 1  # ...and stopped at the second evaluation from the floor on
    with pytest.raises(tt.ConfigError, match="patience_from"):
        tt.TrainConfig(patience_from=1.5)


def test_min_steps_lengthens_a_short_run_and_says_so(tiny_bert, toy):
    texts, labels = toy
    per_epoch = math.ceil(len(texts) / 4)
    lines = []
    r = _clf(tiny_bert, 1, epochs=1, min_steps=per_epoch * 2 + 1).fit(texts, labels, log=lines.append).train_result_
    assert r.steps == per_epoch * 2 + 1
    assert any(f"training {per_epoch * 2 + 1} steps" in x and "--min-steps 1" in x for x in lines)
    lines.clear()  # a floor below the epochs' steps changes nothing and says nothing
    r = _clf(tiny_bert, 1, epochs=1, min_steps=1).fit(texts, labels, log=lines.append).train_result_
    assert r.steps == per_epoch and not any("min_steps" in x for x in lines)


def test_label_descriptions_join_the_training_examples_after_the_dev_split(tiny_bert, toy, tmp_path):
    import json
    from tailtune.data import with_descriptions
    texts, labels = toy
    ds = tt.TextDataset(texts, labels)
    more = with_descriptions(ds, {"good": "It was great .", "bad": ["It was bad .", "awful"]}, copies=3)
    assert more.texts[:len(texts)] == texts and len(more) == len(texts) + 9
    assert more.labels[len(texts):] == ["good"] * 3 + ["bad"] * 6
    for bad, match in (({"cheap": "x"}, "does not have"), ({"good": " "}, "non-blank"), ({"good": 5}, "a text or"),
                       ({"good": ["x", None]}, "non-blank")):
        with pytest.raises(tt.ConfigError, match=match):
            with_descriptions(ds, bad)
    from tailtune.zeroshot import label_descriptions
    assert label_descriptions(["good", "gift_card"], {"good": "fine"}, "about {label}") == {
        "good": "fine", "gift_card": "about gift card"}
    with pytest.raises(tt.ConfigError, match="write the label's place as {label}"):
        label_descriptions(["good"], None, "about {name}")
    with pytest.raises(tt.ConfigError, match="integer >= 1"):
        with_descriptions(ds, {"good": "x"}, copies=0)
    with pytest.raises(tt.ConfigError, match="text pairs"):
        with_descriptions(tt.TextDataset(texts, labels, texts), {"good": "x"})
    # fit: the carved dev set holds none of them, the class statistics are the data's own, a save records them
    seen = []
    clf = _clf(tiny_bert, 3)
    fit = tt.api.train

    def spy(model, examples, *args, **kwargs):
        seen.append(list(examples.texts))
        return fit(model, examples, *args, **kwargs)
    tt.api.train = spy
    try:
        clf.fit(texts * 2, labels * 2, descriptions={"money": "This is about money ."}, description_copies=2)
    finally:
        tt.api.train = fit
    assert seen[0].count("This is about money .") == 2
    assert sum(clf.class_stats_["counts"].values()) == len(seen[0]) - 2  # the training texts, without them
    clf.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "tailtune.json").read_text())
    assert meta["descriptions"] == {"copies": 2, "texts": {"money": ["This is about money ."]}}


TARGET = torch.tensor([1.0, -2.0, 0.5])


class _Quadratic:
    """A loop job with one parameter vector pulled towards a noisy target: the loop's AdamW moves it every step."""

    def __init__(self) -> None:
        self.model = torch.nn.Module()
        self.model.w = torch.nn.Parameter(torch.zeros(3))
        self.micro_batches, self.settings, self.total_steps = 4, {}, 0

    def batches(self, epoch):
        return [epoch * 4 + i for i in range(4)]

    def loss(self, batch, step):
        return ((self.model.w - TARGET - 0.3 * torch.sin(torch.arange(3.0) + batch)) ** 2).sum()

    def param_roles(self):
        return {"w": "head"}


def _trained(evaluate=None, **train):
    """Train a fresh _Quadratic job: (job, its weights after each optimiser step, the loop's result)."""
    job, trained = _Quadratic(), []
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: trained.append(job.model.w.detach().clone()))
    try:
        result = run(job, TrainConfig(epochs=5, lr=0.05, head_lr=0.05, warmup_ratio=0.0, progress=False,
                                      device="cpu", **train), evaluate and (lambda: evaluate(job)))
    finally:
        hook.remove()
    return job, trained, result


def _score(w):
    return -float(((w - TARGET) ** 2).sum())


@pytest.mark.parametrize("with_dev", [True, False])
def test_weight_average_is_what_is_evaluated_and_kept(with_dev):
    """`weight_average`: an EMA of the weights (decay 1 - 1/(share x steps), warmed up as min(decay, (1+n)/(10+n)))
    is what dev sees and what the run keeps, while the steps go on from the weights as trained."""
    seen = []

    def evaluate(job):
        seen.append(job.model.w.detach().clone())
        return {"macro_f1": _score(job.model.w.detach())}
    job, trained, result = _trained(evaluate if with_dev else None, weight_average=0.25, eval_every=1)
    total = result.steps
    assert total == 20 and len(trained) == total
    decay = 1 - 1 / (0.25 * total)
    average, expected = torch.zeros(3), []
    for n, w in enumerate(trained):
        d = min(decay, (1 + n) / (10 + n))
        average = d * average + (1 - d) * w
        expected.append(average.clone())
    final = job.model.w.detach()
    if with_dev:
        assert len(seen) == total
        for got, want in zip(seen, expected):
            torch.testing.assert_close(got, want)
        scores = [_score(a) for a in expected]
        best = scores.index(max(scores))  # (the first of equals, as the loop keeps it)
        torch.testing.assert_close(final, expected[best])
        assert result.best_step == best + 1
    else:
        torch.testing.assert_close(final, expected[-1])
    assert not torch.allclose(expected[-1], trained[-1], atol=1e-3)  # the average is not the trained weights
    # the steps went on from the trained weights: without the average they are the same trajectory
    for a, b in zip(trained, _trained()[1]):
        torch.testing.assert_close(a, b)


def test_weight_average_share_is_checked():
    with pytest.raises(tt.ConfigError, match="weight_average"):
        tt.TrainConfig(weight_average=2.0)
    with pytest.raises(tt.ConfigError, match="weight_average"):
        tt.TrainConfig(weight_average=0)


@pytest.mark.parametrize("select_metric", [None, "accuracy", "last"])
def test_select_metric_picks_the_checkpoint_and_what_early_stopping_watches(select_metric):
    """`select_metric`: the dev score that picks the kept checkpoint and that early stopping watches (none:
    macro-F1; last: the last step, never stopping early). The result reports the kept checkpoint's dev macro-F1."""
    macro = [0.5] * 20
    macro[3], macro[11] = 0.9, 0.7  # a macro-F1 spike at step 4 (accuracy there: 0.2; at step 12: 0.6)
    accuracy = [0.05 * min(n, 12) for n in range(1, 21)]  # rises to step 12, then level (a tie is no better)
    seen = []

    def evaluate(job):
        seen.append(job.model.w.detach().clone())
        return {"macro_f1": macro[len(seen) - 1], "accuracy": accuracy[len(seen) - 1]}
    job, trained, result = _trained(evaluate, eval_every=1, patience=3, select_metric=select_metric)
    best, stop = {None: (4, 7), "accuracy": (12, 15), "last": (20, 20)}[select_metric]
    assert (result.best_step, result.steps) == (best, stop)
    assert result.best_dev_macro_f1 == macro[best - 1]
    torch.testing.assert_close(job.model.w.detach(), trained[best - 1])
    torch.testing.assert_close(seen[best - 1], trained[best - 1])


def test_select_metric_is_checked():
    with pytest.raises(tt.ConfigError, match="select_metric='f1': must be one of macro_f1, accuracy, last"):
        tt.TrainConfig(select_metric="f1")
