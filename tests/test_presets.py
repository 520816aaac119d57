"""One shared test over every registered preset and every registry entry, on tiny random BERT and RoBERTa models.

Registering an entry is enough to get it tested: an entry no preset uses is combined with the first
preset that accepts it (``entry_configs``), and a test fails when some entry is left out.
"""
import numpy as np
import pytest
import torch

import tailtune as tt
from tailtune.config import AXIS_NAMES
from tailtune.device import set_seed
from tailtune.errors import ConfigError
from tailtune.multitask import TaskSet
from tailtune.registry import STAGES
from tailtune.training import predict_logits, train
from tiny import perturbed_module

CONTEXT = {"template": "{text} it is about {mask} ."}
SMALL = {"contrastive_max_pairs": 32, "crt_epochs": 2.0}  # keep the stages short on the toy task
WORDS = {"good": "good", "bad": "bad", "money": "price"}


def entry_configs() -> dict:
    """Every preset, plus one configuration for each registry entry that no preset uses."""
    configs = {name: tt.config_from_preset(name, defaults=CONTEXT) for name in tt.PRESETS}
    covered = {(a, getattr(c, a)) for c in configs.values() for a in AXIS_NAMES}
    for axis, registry in tt.AXES.items():
        for entry in registry:
            if (axis, entry.name) in covered:
                continue
            for base in tt.PRESETS:
                try:
                    configs[f"{axis}={entry.name}"] = tt.config_from_preset(base, defaults=CONTEXT,
                                                                            **{axis: entry.name})
                    break
                except ConfigError:
                    continue
    staged = {s for c in configs.values() for s in c.stages}
    for entry in STAGES:  # a stage no preset runs: with the first preset that takes it
        if entry.name not in staged:
            for base in tt.PRESETS:
                try:
                    configs[f"stage={entry.name}"] = tt.config_from_preset(base, defaults={**CONTEXT, **SMALL},
                                                                           stages=[entry.name])
                    break
                except ConfigError:
                    continue
    return configs


CONFIGS = entry_configs()
# options that add parameters to an entry the presets already cover
CONFIGS["auto+layer_norm"] = tt.config_from_preset("auto", defaults=CONTEXT, layer_norm="fresh")


def test_every_registry_entry_is_covered():
    covered = {(a, getattr(c, a)) for c in CONFIGS.values() for a in AXIS_NAMES}
    covered |= {("stage", s) for c in CONFIGS.values() for s in c.stages}
    missing = [(axis, e.name) for axis, r in (*tt.AXES.items(), ("stage", STAGES)) for e in r
               if (axis, e.name) not in covered]
    assert not missing, f"no preset accepts these entries; give one a preset: {missing}"

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
                perturbed_module(preset, backbone, root / name, ["x", "y", "z", "w"][:2 + len(name) % 3],
                                 seed=len(name), defaults={"template": "{text} it is {mask} ."})
            made[backbone] = root
        return made[backbone]
    return get


def _fit(preset, backbone, toy, epochs=None, config=None):
    config = config or CONFIGS.get(preset) or tt.config_from_preset(preset, defaults=CONTEXT)
    decoder = config.head == "label-decoder"
    # the label decoder starts with every label scoring alike (its pointer starts as mean pooling)
    epochs = epochs or (30 if decoder else 8)
    return tt.TailtuneClassifier(preset, backbone, config=config,
                                 verbalizer=WORDS if config.uses_label_words else None,
                                 # a transformer decoder head (Y-Tuning) collapses at 1e-2
                                 train_config=tt.TrainConfig(epochs=epochs, batch_size=8, lr=3e-3,
                                                             head_lr=3e-3 if decoder else 1e-2,
                                                             seed=1, progress=False, warmup_ratio=0.0))


def _mean_loss(model, encoded, target):
    return model.loss(predict_logits(model, encoded, calibrated=False), target).item()


@pytest.mark.parametrize("preset", list(CONFIGS))
def test_every_preset_and_entry(preset, tiny_model, toy, tmp_path, other_tasks):
    texts, labels = toy
    clf = _fit(preset, tiny_model, toy)
    labels_ = sorted(set(labels))
    target = torch.tensor([labels_.index(y) for y in labels])

    # 1. the loss falls on the toy task (same pieces fit() uses, loss measured before and after)
    set_seed(1)
    model = tt.build_classifier(clf.config, labels_, tiny_model, clf.verbalizer)
    model.input_format.set_pool(tt.TextDataset(texts, labels))  # (demonstrations draw on the training set)
    enc = model.encode(texts)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = _mean_loss(model, enc, target)
    train(model, tt.TextDataset(texts, labels), clf.train_config)
    assert _mean_loss(model, enc, target) < loss_before - 0.05
    # ... frozen parameters never move, and trainable ones do (all but the few a shift-invariant loss
    # gives no gradient: a bias added to every class score alike)
    moved = {n: not torch.equal(p, before[n]) for n, p in model.named_parameters()}
    assert not any(moved[n] for n, p in model.named_parameters() if not p.requires_grad)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum(moved[n] for n in trainable) >= 0.9 * len(trainable), [n for n in trainable if not moved[n]]

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
    assert ("{soft" in getattr(cfg.of("input_format"), "full_template", "")) == ("tuning.soft_prompt" in tuning_names)
    assert (cfg.trains == "prefix") == any(n.startswith("tuning.prefix.") for n in tuning_names)
    assert names <= head_names | encoder_names | tuning_names
    if cfg.head == "verbalizer":
        tied = model.head.decoder_weight is model.encoder.get_input_embeddings().weight
        assert tied != cfg.options["decouple_embeddings"]
        assert ("head.decoder_weight" in names) == cfg.options["decouple_embeddings"]
        assert "head.bias" in names and "head.layer_norm.weight" in names
    elif cfg.head == "label-decoder":
        assert {"head.labels", "head.task"} <= names and any(n.startswith("head.decoder.") for n in names)
    elif cfg.head == "mlp":
        assert {"head.dense.weight", "head.out.weight"} <= names
    else:
        assert head_names <= names  # every parameter of the head trains
    if "layer_norm" in cfg.options:  # (mlp, cosine)
        assert ("head.layer_norm.weight" in head_names) == (cfg.options["layer_norm"] != "none")

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
    if not model.shares_backbone:  # these change the backbone itself: they cannot share it
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
    cfg = tt.config_from_preset("prompt", calibration="eta-norm", eta=1.3, objective="focal")
    assert (cfg.head, cfg.options["eta"], cfg.objective) == ("verbalizer", 1.3, "focal")
    off = tt.config_from_preset("cls-eta-norm", calibration="none")  # a preset's choice can be switched off
    assert off.calibration == "none" and "eta" not in off.options
    assert tt.config_from_preset("y-tuning", decoder_width=None).options["decoder_width"] is None
    auto = tt.config_from_preset("auto")  # the default fits its logit adjustment's τ on dev ...
    assert (auto.calibration, auto.options["adjust_tau"], auto.options["adjust_tau_from_dev"]) == ("logit-adjust", 0, True)
    assert auto.options["adjust_target"] == "auto"  # for a dev set it carved, a balanced test set
    with pytest.raises(ConfigError, match="adjust_target='test': use one of dev, balanced, auto"):
        tt.config_from_preset("auto", adjust_target="test")
    fixed = tt.config_from_preset("auto", adjust_tau=1.0)  # ... and a τ the user gives is used as given
    assert (fixed.options["adjust_tau"], fixed.options["adjust_tau_from_dev"]) == (1.0, False)
    both = tt.config_from_preset("auto", adjust_tau=0.5, adjust_tau_from_dev=True)  # unless asked for both
    assert (both.options["adjust_tau"], both.options["adjust_tau_from_dev"]) == (0.5, True)
    with pytest.raises(ConfigError, match="option 'adjust_tau' belongs to calibration='logit-adjust'"):
        tt.config_from_preset("cls", adjust_tau=1.0)  # named as given, not through the option it implies
    assert "adjust_tau" not in tt.config_from_preset("auto", calibration="none").options
    with pytest.raises(ConfigError, match="unknown preset"):
        tt.config_from_preset("nope")
    with pytest.raises(ConfigError, match="unknown option 'etaa'.*did you mean 'eta'"):
        tt.config_from_preset("cls", etaa=1.0)
    with pytest.raises(ConfigError, match="needs an input with one"):
        tt.ClassifierConfig(head="verbalizer")
    with pytest.raises(ConfigError, match="needs readout 'mask'"):
        tt.ClassifierConfig(head="verbalizer", input_format="template", readout="cls")
    auto = tt.ClassifierConfig(head="verbalizer", input_format="template")
    assert auto.readout == "auto" and auto.resolved(None).readout == "mask"
    assert tt.ClassifierConfig(head="label-decoder").resolved(None).readout == "tokens"
    assert tt.ClassifierConfig().resolved(None).readout == "cls"
    with pytest.raises(ConfigError, match="'layer_norm' belongs to head='cosine' or head='mlp'"):
        tt.config_from_preset("prompt", layer_norm="fresh")
    with pytest.raises(ConfigError, match="'lora_r' belongs to trains='lora'.*trains='adapter'"):
        tt.config_from_preset("adapter", lora_r=4)


def test_an_option_added_later_leaves_what_was_recorded_unchanged():
    # the cosine head's layer_norm came after `auto` runs were saved, checkpointed and finished: at its neutral
    # value it stays out of the recorded configuration (run identities, resume checks, artefacts)
    plain = tt.config_from_preset("auto", layer_norm="none")
    assert not {"layer_norm", "layer_norm_from"} & set(plain.to_dict()["options"])
    assert tt.ClassifierConfig.from_dict(plain.to_dict()) == plain
    # `auto` chooses it from the data (layer_norm=auto, recorded as such); fitted below its bound, the classifier's
    # configuration is the one recorded before the option existed
    auto = tt.config_from_preset("auto")
    assert auto.to_dict()["options"]["layer_norm"] == "auto"
    assert auto.fitted(per_class=16.0).to_dict() == plain.to_dict()
    assert auto.fitted(per_class=64.0).options["layer_norm"] == "fresh"
    assert tt.config_from_preset("auto", layer_norm="fresh").to_dict()["options"]["layer_norm"] == "fresh"
    assert tt.config_from_preset("cls").to_dict()["options"]["layer_norm"] == "none"  # the MLP head's, as recorded


def test_config_round_trips_and_reads_old_flat_configs():
    for cfg in CONFIGS.values():
        assert tt.ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    old = {"input_format": "template", "template": "{text} x {mask} .", "head": "verbalizer", "loss": "focal",
           "focal_gamma": 2.0, "eta": 1.0, "trains": "all", "lora_r": 8, "max_length": 64, "activation": "tanh"}
    cfg = tt.ClassifierConfig.from_dict(old)
    assert (cfg.readout, cfg.objective, cfg.calibration, cfg.max_length) == ("mask", "focal", "eta-norm", 64)
    assert cfg.options["focal_gamma"] == 2.0 and cfg.options["eta"] == 1.0 and "lora_r" not in cfg.options


@pytest.mark.parametrize("preset", ["cls", "prompt", "cls-pt-ln", "adapter", "lora", "soft-prompt"])
def test_distilbert(preset, tmp_path_factory, toy, tmp_path):
    from tiny import make_distilbert
    texts, labels = toy
    path = make_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))
    clf = _fit(preset, path, toy, epochs=2).fit(texts, labels)
    clf.save(tmp_path / "m")
    loaded = tt.TailtuneClassifier.load(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(loaded.decision_function(texts), clf.decision_function(texts), atol=1e-5)
