"""Compiled inference (torch.compile, weights frozen into the graph) gives the eager model's scores, for a full
model and for mixed-task batches on one shared backbone, and compiles afresh when a weight changes."""
import json

import numpy as np
import pytest
import torch

import tailtune as tt
from tailtune.cli import main
from tailtune.device import compile_encoder, frozen_weights, reset_compiled
from tailtune.multitask import TaskSet
from tailtune.tuning.routing import TaskRouter
from tiny import perturbed_module

TEXTS = ["the movie was great", "bad food", "oil price news today", "who", "a good game and a bad film on the market"]


@pytest.fixture(autouse=True)
def _fresh_compiler():
    """Each test starts from empty compile caches."""
    reset_compiled()
    torch._dynamo.utils.counters.clear()
    yield
    reset_compiled()


def compiled_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_compiled_prediction_equals_eager_and_follows_weight_changes(tiny_bert, toy, tmp_path, capsys):
    texts, labels = toy
    clf = tt.TailtuneClassifier("auto", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False)).fit(
        texts, labels)
    clf.save(tmp_path / "m")
    eager = clf.decision_function(TEXTS)
    one = clf.decision_function(TEXTS[:1])
    clf.set_compile()
    np.testing.assert_allclose(clf.decision_function(TEXTS), eager, atol=1e-5)
    np.testing.assert_allclose(clf.decision_function(TEXTS[:1]), one, atol=1e-5)  # a batch of one: another graph
    assert compiled_graphs() >= 1  # the compiled path ran (not a silent fallback to eager)
    with torch.no_grad():  # weights changed in place: the frozen graphs would answer for the old ones
        for p in clf.model_.encoder.parameters():
            p.mul_(1.1)
    changed = clf.decision_function(TEXTS)
    clf.set_compile(False)
    np.testing.assert_allclose(changed, clf.decision_function(TEXTS), atol=1e-5)
    assert np.abs(changed - eager).max() > 1e-3
    # the command line: the same probabilities with and without --compile
    rows = {}
    for flag in ([], ["--compile"]):
        assert main(["predict", str(tmp_path / "m"), *TEXTS, *flag]) == 0
        rows[bool(flag)] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows[False]] == [r["label"] for r in rows[True]]
    assert np.allclose([r["score"] for r in rows[False]], [r["score"] for r in rows[True]], atol=1e-5)


def test_one_process_compiles_more_encoders_than_dynamo_keeps_graphs_for(monkeypatch):
    """Dynamo keeps a few graphs per function and then runs it eagerly (a warning only); each compiled encoder
    takes its own, and they outlive it. Each live encoder gets room, and a gone one's graphs (and the weights
    frozen into them) are dropped when the next encoder compiles. Here dynamo's room is one graph."""
    import gc
    import weakref

    import transformers

    import tailtune.device as device
    monkeypatch.setattr(device, "GRAPHS_PER_ENCODER", 1)
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16)
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 4, dtype=torch.long)}

    def compiled_encoder():
        encoder = transformers.BertModel(config).eval()
        run = compile_encoder(encoder)
        with torch.no_grad(), frozen_weights():
            torch.testing.assert_close(run(**batch).last_hidden_state, encoder(**batch).last_hidden_state)
        return encoder

    with torch._dynamo.config.patch(recompile_limit=1):
        live = [compiled_encoder() for _ in range(3)]
        assert compiled_graphs() == 3  # each of the three compiled (dynamo alone: the 2nd and 3rd run eagerly)
        weight = weakref.ref(live[0].pooler.dense.weight)
        del live
        gc.collect()
        assert weight() is not None  # the graphs of the encoders gone still hold their frozen weights ...
        compiled_encoder()
        gc.collect()
        assert weight() is None  # ... until the next encoder compiles
        assert compiled_graphs() == 4


def test_compiled_task_set_mixes_tasks_and_takes_new_ones(tiny_bert, tmp_path):
    kinds = {"adapter": {}, "lora": {}, "prefix": {}, "soft-prompt": {"soft_tokens": 2}}
    for seed, kind in enumerate(kinds):
        perturbed_module(kind, tiny_bert, tmp_path / kind, seed=seed, **kinds[kind])
    eager, compiled = TaskSet(tiny_bert), TaskSet(tiny_bert, compile=True)
    tasks = [list(kinds)[i % len(kinds)] for i in range(len(TEXTS) * 2)]
    for task_set in (eager, compiled):
        task_set.add(tmp_path / "adapter", "adapter")
    first = ["adapter"] * len(tasks)
    for a, b in zip(compiled.logits(TEXTS * 2, first), eager.logits(TEXTS * 2, first)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for kind in list(kinds)[1:]:  # added after the first compiled pass (LoRA puts new weights inside the encoder)
        for task_set in (eager, compiled):
            task_set.add(tmp_path / kind, kind)
    assert TaskRouter.of(compiled.backbone.encoder).compiled is not None
    for a, b in zip(compiled.logits(TEXTS * 2, tasks), eager.logits(TEXTS * 2, tasks)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert compiled_graphs() >= 2


def test_compile_refusals_speak_to_the_user(tiny_bert, toy, monkeypatch, capsys, tmp_path):
    texts, labels = toy
    clf = tt.TailtuneClassifier("pabee", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False)).fit(
        texts, labels)
    clf.save(tmp_path / "m")
    with pytest.raises(tt.errors.ConfigError, match="compiled inference and early exit do not combine"):
        tt.TailtuneClassifier.load(tmp_path / "m").set_early_exit().set_compile()
    with pytest.raises(tt.errors.ConfigError, match="compiled inference and early exit do not combine"):
        tt.TailtuneClassifier.load(tmp_path / "m").set_compile().set_early_exit()
    assert main(["predict", str(tmp_path / "m"), "a film", "--compile", "--early-exit"]) == 2
    assert "do not combine" in capsys.readouterr().err
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert main(["predict", str(tmp_path / "m"), "a film", "--compile"]) == 2
    err = capsys.readouterr().err
    assert "needs a C++ compiler" in err and "without --compile" in err and "Traceback" not in err
    with pytest.raises(tt.errors.ConfigError, match="needs a C...compiler"):  # a task set: before any task loads
        TaskSet(tiny_bert, compile=True)


def test_served_tasks_compile_with_the_server_option(tiny_bert, tmp_path):
    """`serve --compile`: task modules on the shared backbone and full models beside them answer as without it."""
    from tailtune.serve.host import ModelHost
    perturbed_module("lora", tiny_bert, tmp_path / "mood", labels=("good", "bad"), seed=2)
    perturbed_module("cls", tiny_bert, tmp_path / "full", labels=("x", "y", "z"), seed=3)
    eager, compiled = ModelHost(tmp_path), ModelHost(tmp_path, compile=True)
    for host in (eager, compiled):
        assert host.load_all() == ["full", "mood"]
    assert compiled_graphs() >= 2 and compiled.warm_seconds > eager.warm_seconds  # compiled at start-up, not later
    tasks = ["mood", "full"] * len(TEXTS)
    for a, b in zip(compiled.predict(TEXTS * 2, tasks), eager.predict(TEXTS * 2, tasks)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert compiled.full["full"].model_.router.compiled is not None and compiled_graphs() >= 2
