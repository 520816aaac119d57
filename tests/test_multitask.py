"""Prefix tuning and several task modules on one backbone instance."""
import warnings

import numpy as np
import pytest
import torch

import tailtune as tt
from tailtune.multitask import TaskSet, task_dirs
from tailtune.training import predict_logits
from tiny import perturbed_module


def test_prefix_shapes_and_accounting(tiny_bert):
    model = tt.build_classifier(tt.config_from_preset("prefix", prefix_length=3), ["a", "b"], tiny_bert)
    assert model.tuning.prefix().shape == (2, 2, 3, 32)  # layers, key/value, length, hidden
    assert model.parameter_counts()["trainable_without_head"] == 2 * 2 * 3 * 32
    reparam = tt.build_classifier(tt.config_from_preset("prefix", prefix_length=3, prefix_reparam=16),
                                  ["a", "b"], tiny_bert)
    assert reparam.tuning.prefix().shape == (2, 2, 3, 32)
    assert reparam.parameter_counts()["trainable_without_head"] == 3 * 32 + (32 * 16 + 16) + (16 * 128 + 128)


def test_prefix_changes_attention_and_respects_padding(tiny_model, tmp_path):
    model = perturbed_module("prefix", tiny_model, tmp_path / "p").eval()
    texts = ["the movie was great", "bad", "the market price of oil was terrible news"]
    base = tt.build_classifier(tt.config_from_preset("linear-probe"), ["a", "b", "c"], tiny_model).eval()
    base.head.load_state_dict(model.head.state_dict())
    # the prefixes really enter attention ...
    assert not torch.allclose(predict_logits(model, model.encode(texts)), predict_logits(base, base.encode(texts)))
    # ... and padding (shorter rows in a batch) does not change a row's result
    one_by_one = torch.cat([predict_logits(model, model.encode([t])) for t in texts])
    torch.testing.assert_close(predict_logits(model, model.encode(texts), batch_size=3), one_by_one,
                               atol=1e-5, rtol=1e-4)


def test_prefix_trains_with_reparameterisation(tiny_bert, toy):
    texts, labels = toy
    clf = tt.TailtuneClassifier("prefix", tiny_bert, prefix_reparam=16, train_config=tt.TrainConfig(
        epochs=6, batch_size=8, lr=1e-3, head_lr=1e-2, module_lr=1e-2, progress=False, seed=1))
    clf.fit(texts, labels)
    assert clf.evaluate(tt.TextDataset(texts, labels))["accuracy"] > 0.5


def test_module_lr_reaches_only_task_modules(tiny_bert):
    from tailtune.optim import param_groups
    model = tt.build_classifier(tt.config_from_preset("lora"), ["a", "b"], tiny_bert)
    cfg = tt.TrainConfig(lr=1e-5, head_lr=1e-3, module_lr=1e-2)
    by_lr = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in param_groups(model, model.param_roles(), cfg):
        for p in g["params"]:
            by_lr.setdefault(g["lr"], set()).add(names[id(p)])
    assert all(n.startswith("head.") for n in by_lr[1e-3])
    assert by_lr[1e-2] and all(".lora_" in n for n in by_lr[1e-2])
    assert 1e-5 not in by_lr  # nothing else trains


def test_layer_lr_decay_scales_the_backbone_by_depth(tiny_bert):
    """`layer_lr_decay`: the top encoder layer (and what sits above it) at lr, each layer below at decay x the one
    above, the embeddings one step below the first layer; the head keeps head_lr."""
    from tailtune.optim import layer_depths, param_groups
    model = tt.build_classifier(tt.config_from_preset("cls"), ["a", "b"], tiny_bert)
    cfg = tt.TrainConfig(lr=1e-4, head_lr=1e-3, layer_lr_decay=0.5)
    lr_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in param_groups(model, model.param_roles(), cfg):
        for p in g["params"]:
            lr_of[names[id(p)]] = g["lr"]
    assert set(lr_of) == set(model.param_roles())  # every trainable parameter, once
    layers = 2  # the tiny model's (tests/tiny.py)
    for name, lr in lr_of.items():
        if name.startswith("head."):
            assert lr == 1e-3
        elif "embeddings" in name:
            assert lr == pytest.approx(1e-4 * 0.5 ** layers), name
        elif ".layer." in name:
            i = int(name.split(".layer.")[1].split(".")[0])
            assert lr == pytest.approx(1e-4 * 0.5 ** (layers - 1 - i)), name
        else:  # above the layers (a pooler, where the backbone has one)
            assert lr == pytest.approx(1e-4), name
    assert all(any(part in n for n in lr_of) for part in ("embeddings", ".layer.0.", ".layer.1."))
    # without it one rate for the whole backbone, as before
    plain = {g["lr"] for g in param_groups(model, model.param_roles(), tt.TrainConfig(lr=1e-4, head_lr=1e-3))}
    assert plain == {1e-4, 1e-3}
    # other naming schemes: GPT-2's h.N, T5's block.N, layers.N; what matches none sits on top
    assert layer_depths(["wte.weight", "h.0.attn.w", "h.1.mlp.w", "ln_f.weight"]) == \
        {"wte.weight": 0, "h.0.attn.w": 1, "h.1.mlp.w": 2, "ln_f.weight": 2}
    with pytest.raises(tt.ConfigError, match="layer_lr_decay"):
        tt.TrainConfig(layer_lr_decay=1.5)
    with pytest.raises(tt.ConfigError, match="layer_lr_decay"):
        tt.TrainConfig(layer_lr_decay=0)


@pytest.mark.parametrize("preset", ["cls", "lora"])
def test_train_says_what_layer_lr_decay_does(tiny_bert, tmp_path, capsys, preset):
    """`train --layer-lr-decay` prints the backbone's range of rates, or that no backbone weight trains."""
    from tailtune.cli import main
    from conftest import TOY_LABELS, TOY_TEXTS
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS * 2, TOY_LABELS * 2))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows + "\n")
    assert main(["train", "--train", str(tmp_path / "train.tsv"), "--backbone", tiny_bert, "--output",
                 str(tmp_path / "out"), "--preset", preset, "--layer-lr-decay", "0.5", "--lr", "1e-4", "--epochs", "1",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    if preset == "cls":  # the tiny BERT's 2 layers: embeddings at 0.25 x lr
        assert "layer-wise lr decay 0.5: the backbone trains at 2.5e-05 at the bottom to 0.0001 at the top" in out
    else:
        assert "layer-wise lr decay 0.5: not applied, as no backbone weight trains in this run" in out


def test_task_set_matches_standalone_modules_and_shares_one_encoder(tiny_model, tmp_path):
    presets = {"ad": "adapter", "lo": "lora", "pre": "prefix", "soft": "soft-prompt", "pl": "prompt-lora"}
    for i, (name, preset) in enumerate(presets.items()):
        perturbed_module(preset, tiny_model, tmp_path / "set" / name, labels=("a", "b", "c", "d")[:2 + i % 3], seed=i)
    tasks = TaskSet()
    for name, path in task_dirs(tmp_path / "set").items():
        tasks.add(path, name)
    assert len({id(m.encoder) for m in tasks.tasks.values()}) == 1
    texts = ["the movie was great", "bad food", "oil price news", "who is it", "a good game"] * 2
    names = [list(presets)[i % len(presets)] for i in range(len(texts))]
    mixed = tasks.logits(texts, names, batch_size=4)
    for name in presets:  # each equals the module loaded on its own backbone, alone
        alone = tt.Classifier.load(tmp_path / "set" / name)
        rows = [i for i, t in enumerate(names) if t == name]
        expected = predict_logits(alone, alone.encode([texts[i] for i in rows]))
        torch.testing.assert_close(torch.stack([mixed[i] for i in rows]), expected, atol=1e-5, rtol=1e-4)
    assert tasks.predict(["oil price news"], "ad")[0] in tasks.tasks["ad"].labels
    tasks.remove("lo")
    assert not any(".lo." in n for n in tasks.backbone.encoder.state_dict())  # its LoRA matrices are gone
    assert any(".pl." in n for n in tasks.backbone.encoder.state_dict())  # another task's stay
    with pytest.raises(ValueError, match="unknown task"):
        tasks.predict(["x"], "lo")
    with pytest.raises(ValueError, match="already loaded"):
        tasks.add(tmp_path / "set" / "ad", "ad")


def test_task_set_memory_is_one_backbone(tiny_bert, tmp_path):
    for i in range(3):
        perturbed_module("adapter", tiny_bert, tmp_path / f"t{i}", seed=i)
    tasks = TaskSet()
    for i in range(3):
        tasks.add(tmp_path / f"t{i}")
    encoder = tasks.backbone.encoder
    backbone = sum(p.numel() for p in encoder.parameters())
    unique = {id(p): p.numel() for m in tasks.tasks.values() for p in m.parameters()}
    modules = sum(p.numel() for m in tasks.tasks.values() for n, p in m.named_parameters()
                  if not n.startswith("encoder."))
    assert sum(unique.values()) == backbone + modules  # the encoder is held once


def test_mixed_batch_with_bf16_and_text_pairs(tiny_bert, tmp_path):
    perturbed_module("adapter", tiny_bert, tmp_path / "a", template="{text} ? {mask} , {text_b}",
                     input_format="template", readout="mask")
    model = perturbed_module("prefix", tiny_bert, tmp_path / "b")
    tt.save_classifier(model, tmp_path / "b", {"text_pairs": True}, overwrite=True)  # as fit(X, y, X_b) saves it
    tasks = TaskSet()
    tasks.add(tmp_path / "a")
    tasks.add(tmp_path / "b")
    texts, pairs = ["good film", "bad game", "oil price"], ["great", "awful", "news"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp32 = tasks.logits(texts, ["a", "b", "a"], texts_b=pairs)
    bf16 = tasks.logits(texts, ["a", "b", "a"], texts_b=pairs, bf16=True)
    with pytest.warns(UserWarning, match="task\\(s\\) b were trained on pairs of texts, but these texts come without"):
        tasks.logits(texts, ["b", "b", "b"])  # (a's template needs its second text: refused, not warned)
    for x, y in zip(fp32, bf16):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=0.1)


def test_cli_predict_picks_a_task(tiny_bert, tmp_path, capsys):
    import json

    from tailtune.cli import main
    perturbed_module("adapter", tiny_bert, tmp_path / "set" / "topic", labels=("news", "sports"))
    perturbed_module("lora", tiny_bert, tmp_path / "set" / "mood", labels=("good", "bad", "meh"))
    assert main(["predict", str(tmp_path / "set"), "a good film", "bad food", "--task", "mood"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["task"] for r in rows] == ["mood", "mood"] and {r["label"] for r in rows} <= {"good", "bad", "meh"}
    assert main(["predict", str(tmp_path / "set"), "--task", "mood", "a good film"]) == 0  # the README's form
    assert json.loads(capsys.readouterr().out)["task"] == "mood"
    data = tmp_path / "mixed.tsv"
    data.write_text("text\ttask\na good film\tmood\nthe news\ttopic\n")
    assert main(["predict", str(tmp_path / "set"), "--data", str(data), "--task-col", "task"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["label"] in {"good", "bad", "meh"} and rows[1]["label"] in {"news", "sports"}
    assert main(["predict", str(tmp_path / "set"), "a good film"]) == 2  # which task?
    assert "--task" in capsys.readouterr().err
