"""One shared test over every registered preset, on tiny random BERT and RoBERTa models."""
import numpy as np
import pytest
import torch

import tailtune as tt
from tailtune.multitask import TaskSet
from tailtune.train import predict_logits, set_seed, train

# other task modules that share the backbone in the mixed-batch check, one per routed mechanism
OTHER_TASKS = {"o-adapter": "adapter-pfeiffer", "o-lora": "prompt-lora", "o-prefix": "prefix",
               "o-soft": "soft-prompt", "o-probe": "linear-probe"}


@pytest.fixture(scope="module")
def other_tasks(tmp_path_factory):
    """Saved modules of every routed mechanism, with randomly moved parameters (so no module
    is the identity), per tiny backbone."""
    made = {}

    def get(backbone):
        if backbone not in made:
            root = tmp_path_factory.mktemp("others")
            for name, preset in OTHER_TASKS.items():
                torch.manual_seed(len(name))
                model = tt.build_classifier(tt.config_from_preset(preset, template="{text} it is {mask} ."),
                                            ["x", "y", "z", "w"][:2 + len(name) % 3], backbone)
                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad:
                            p.add_(torch.randn_like(p) * 0.3)
                model.save(root / name)
            made[backbone] = root
        return made[backbone]
    return get


def _fit(preset, backbone, toy, epochs=None, **kw):
    # the label decoder starts with every label scoring alike (its pointer starts as mean pooling)
    epochs = epochs or (30 if preset.startswith("y-") else 8)
    return tt.TailtuneClassifier(preset, backbone, template="{text} it is about {mask} .",
                                 verbalizer={"good": "good", "bad": "bad", "money": "price"},
                                 # a transformer decoder head (Y-Tuning) collapses at 1e-2
                                 train_config=tt.TrainConfig(epochs=epochs, batch_size=8, lr=3e-3,
                                                             head_lr=3e-3 if preset.startswith("y-") else 1e-2,
                                                             seed=1, progress=False, warmup_ratio=0.0), **kw)


def _mean_loss(model, encoded, target):
    return model.loss(predict_logits(model, encoded, calibrated=False), target).item()


@pytest.mark.parametrize("preset", list(tt.PRESETS))
def test_every_preset(preset, tiny_model, toy, tmp_path, other_tasks):
    texts, labels = toy
    clf = _fit(preset, tiny_model, toy)
    labels_ = sorted(set(labels))
    target = torch.tensor([labels_.index(y) for y in labels])

    # 1. the loss falls on the toy task (same pieces fit() uses, loss measured before and after)
    set_seed(1)
    model = tt.build_classifier(clf.config, labels_, tiny_model, clf.verbalizer)
    enc = model.encode(texts)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = _mean_loss(model, enc, target)
    train(model, enc, target.tolist(), clf.train_config)
    assert _mean_loss(model, enc, target) < loss_before - 0.05
    # ... and frozen parameters never move
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n

    clf.fit(texts, labels, dev=tt.TextDataset(texts[:12], labels[:12]))
    model = clf.model_
    cfg = model.config

    # 2. the trainable set is what the preset says
    names = set(model.trainable_parameter_names())
    head_names = {f"head.{n}" for n, _ in model.head.named_parameters()}
    encoder_names = {f"encoder.{n}" for n, _ in model.encoder.named_parameters()}
    tuning_names = {n for n in names if n.startswith("tuning.")}
    if cfg.trains == "all":
        assert encoder_names <= names
    elif cfg.trains == "bitfit":
        assert names & encoder_names == {n for n in encoder_names if n.endswith(".bias")}
    elif cfg.trains == "lora":
        assert names & encoder_names and all(".lora_" in n for n in names & encoder_names)
        assert all(".default." in n for n in names & encoder_names)  # only this task's LoRA
    else:
        assert not names & encoder_names
    assert (cfg.trains == "adapter") == any(n.startswith("tuning.adapters.") for n in tuning_names)
    assert ("{soft" in (cfg.full_template or "")) == ("tuning.soft_prompt" in tuning_names)
    assert (cfg.trains == "prefix") == any(n.startswith("tuning.prefix.") for n in tuning_names)
    assert names <= head_names | encoder_names | tuning_names
    if cfg.head == "verbalizer":
        tied = model.head.decoder_weight is model.encoder.get_input_embeddings().weight
        assert tied != cfg.decouple_embeddings
        assert ("head.decoder_weight" in names) == cfg.decouple_embeddings
        assert "head.bias" in names and "head.layer_norm.weight" in names
    elif cfg.head == "label-decoder":
        assert {"head.labels", "head.task"} <= names and any(n.startswith("head.decoder.") for n in names)
    else:
        assert {"head.dense.weight", "head.out.weight"} <= names
        assert ("head.layer_norm.weight" in head_names) == (cfg.layer_norm != "none")

    # 3. save -> load gives the same predictions; a task module holds only what trained
    clf.save(tmp_path / "m")
    if cfg.trains != "all":
        from safetensors.torch import load_file
        assert set(load_file(tmp_path / "m" / "module.safetensors")) == names
        assert not (tmp_path / "m" / "model.safetensors").exists()
    loaded = tt.TailtuneClassifier.load(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(loaded.decision_function(texts), clf.decision_function(texts), atol=1e-5)
    assert loaded.predict(texts) == clf.predict(texts)
    assert loaded.labels_ == clf.labels_

    # 4. on one shared backbone, a mixed-task batch equals the same examples run task by task
    if cfg.trains in ("all", "bitfit"):  # these change the backbone itself: they cannot share it
        with pytest.raises(ValueError, match="cannot share"):
            TaskSet().add(tmp_path / "m")
        return
    tasks = TaskSet()
    tasks.add(tmp_path / "m", "main")
    for name in OTHER_TASKS:
        tasks.add(other_tasks(tiny_model) / name)
    names = ["main", *OTHER_TASKS]
    mixed_tasks = [names[i % len(names)] for i in range(len(texts))]
    mixed = tasks.logits(texts, mixed_tasks, batch_size=16)
    for name in names:
        rows = [i for i, t in enumerate(mixed_tasks) if t == name]
        alone = tasks.logits([texts[i] for i in rows], [name] * len(rows))
        for i, a in zip(rows, alone):
            torch.testing.assert_close(mixed[i], a, atol=1e-5, rtol=1e-4)
    main = [i for i, t in enumerate(mixed_tasks) if t == "main"]
    standalone = clf.decision_function([texts[i] for i in main])
    np.testing.assert_allclose(torch.stack([mixed[i] for i in main]).numpy(), standalone, atol=1e-5)


def test_presets_are_composable():
    cfg = tt.config_from_preset("prompt", eta=1.1, loss="focal")
    assert (cfg.head, cfg.eta, cfg.loss) == ("verbalizer", 1.1, "focal")
    with pytest.raises(ValueError, match="unknown preset"):
        tt.config_from_preset("nope")
    with pytest.raises(ValueError, match="unknown classifier option"):
        tt.config_from_preset("cls", etaa=1.0)
    with pytest.raises(ValueError, match="needs input_format='template'"):
        tt.ClassifierConfig(head="verbalizer")
    with pytest.raises(ValueError, match="layer_norm"):
        tt.config_from_preset("prompt", layer_norm="fresh")


@pytest.mark.parametrize("preset", ["cls", "prompt", "cls-pt-ln", "adapter", "lora", "soft-prompt"])
def test_distilbert(preset, tmp_path_factory, toy, tmp_path):
    from tiny import make_distilbert
    texts, labels = toy
    path = make_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))
    clf = _fit(preset, path, toy, epochs=2).fit(texts, labels)
    clf.save(tmp_path / "m")
    loaded = tt.TailtuneClassifier.load(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(loaded.decision_function(texts), clf.decision_function(texts), atol=1e-5)
