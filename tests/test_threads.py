"""One classifier, and one TaskSet, called from several threads at once give the sequential results."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import tailtune as tt
from tailtune.multitask import TaskSet
from tiny import perturbed_module

TEXTS = ["the movie was great", "bad food", "oil price news", "who is it", "a good game", "the market price",
         "terrible film", "stock earn news"]


@pytest.mark.parametrize("preset", ["adapter", "lora", "prefix", "soft-prompt"])
def test_one_classifier_from_many_threads(preset, tiny_bert, tmp_path):
    perturbed_module(preset, tiny_bert, tmp_path / preset, seed=1)
    clf = tt.TailtuneClassifier.load(tmp_path / preset, device="cpu")
    calls = [TEXTS[i:] + TEXTS[:i] for i in range(24)]  # 24 calls, each its own batch shapes
    expected = [clf.decision_function(texts) for texts in calls]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(clf.decision_function, calls))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-4)


def test_task_set_from_many_threads(tiny_bert, tmp_path):
    tasks = TaskSet()
    for name, preset in {"ad": "adapter", "lo": "lora", "pre": "prefix", "soft": "soft-prompt"}.items():
        perturbed_module(preset, tiny_bert, tmp_path / name, seed=len(name))
        tasks.add(tmp_path / name, name)
    names = list(tasks.tasks)
    calls = [([t for t in TEXTS[:5 + i % 4]], [names[(i + k) % 4] for k in range(5 + i % 4)]) for i in range(24)]
    expected = [tasks.logits(texts, which, batch_size=3) for texts, which in calls]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: tasks.logits(c[0], c[1], batch_size=3), calls))
    for e, g in zip(expected, got):
        for x, y in zip(e, g):
            torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)
