"""PET / iPET: pattern weights, ensembles, iPET's growing training sets, distillation on soft labels."""
import json

import numpy as np
import pytest
import torch

import tailtune as tt
import tailtune.api as api
from tailtune.cli import main
from tailtune.pet import Pattern, run_pet
from conftest import TOY_LABELS, TOY_TEXTS

WORDS = {"good": "good", "bad": "bad", "money": "price"}
FAST = tt.TrainConfig(epochs=2, batch_size=8, lr=1e-3, progress=False)


def test_fit_on_soft_labels_follows_them(tiny_bert, monkeypatch):
    texts = TOY_TEXTS * 2
    labels = sorted(set(TOY_LABELS))
    soft = np.tile([0.05, 0.05, 0.9], (len(texts), 1))  # every text "money", whatever its words say
    clf = tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(epochs=8, batch_size=8, lr=1e-3,
                                                                                progress=False))
    clf.fit(texts, TOY_LABELS * 2, dev=tt.TextDataset(TOY_TEXTS, ["money"] * 12), soft_labels=soft)
    assert clf.labels_ == labels
    assert np.mean([p == "money" for p in clf.predict(TOY_TEXTS)]) > 0.9
    model = clf.model_
    batch = {k: v for k, v in __import__("tailtune.batch", fromlist=["collate"]).collate(
        model.encode(TOY_TEXTS[:4]), model.tokenizer.pad_token_id, torch.device("cpu")).items()}
    model.eval()
    own = torch.softmax(model(**batch).float() / 2.0, -1).detach()
    assert float(model.distill_loss(batch, own, 2.0)) < 1e-5  # KL to its own soft labels is zero
    with pytest.raises(tt.ConfigError, match="explicit dev"):
        clf.fit(texts, TOY_LABELS * 2, soft_labels=soft)
    with pytest.raises(tt.DataError, match="soft labels"):
        clf.fit(texts, TOY_LABELS * 2, dev=tt.TextDataset(TOY_TEXTS, TOY_LABELS), soft_labels=soft[:5])
    # label descriptions join soft-labelled data as hard labels: one-hot rows after the data's own
    seen = []
    real = tt.api.train

    def spy(model, examples, *args, **kwargs):
        seen.append((list(examples.labels), kwargs["soft"]))
        return real(model, examples, *args, **kwargs)
    monkeypatch.setattr(tt.api, "train", spy)
    clf.fit(texts, TOY_LABELS * 2, dev=tt.TextDataset(TOY_TEXTS, TOY_LABELS), soft_labels=soft,
            descriptions={"good": "It was great ."}, description_copies=2)
    ys, got = seen[0]
    assert ys[len(texts):] == ["good", "good"] and got.shape == (len(texts) + 2, 3)
    assert torch.equal(got[len(texts):], torch.tensor([[0.0, 1.0, 0.0]] * 2))  # ("good" is the 2nd sorted label)
    assert torch.allclose(got[:len(texts)], torch.as_tensor(soft, dtype=torch.float32))


def test_pet_weights_patterns_grows_ipet_sets_and_distils(tiny_bert, monkeypatch):
    fits = []
    real_fit = api.TailtuneClassifier.fit

    def record(self, X, y=None, *a, **kw):
        n = len(X) if not isinstance(X, tt.TextDataset) else len(X.texts)
        fits.append((self.preset, n, kw.get("soft_labels")))
        return real_fit(self, X, y, *a, **kw)

    monkeypatch.setattr(api.TailtuneClassifier, "fit", record)
    train = tt.TextDataset(TOY_TEXTS[::2], TOY_LABELS[::2])  # 2 per class
    dev = tt.TextDataset(TOY_TEXTS, TOY_LABELS)
    unlabeled = [t + " again" for t in TOY_TEXTS] * 2
    patterns = [Pattern("{text} it is {mask} .", WORDS), Pattern("{mask} : {text}", WORDS)]
    out = run_pet(train, dev, unlabeled, patterns, tiny_bert, train_config=FAST, final_preset="cls",
                  final_train_config=FAST, max_length=64, generations=1, log=lambda s: None)
    # weights: each pattern's zero-shot dev accuracy before training
    for p, row in zip(patterns, out["patterns"]):
        model = tt.build_classifier(tt.config_from_preset("prompt", template=p.template, max_length=64),
                                    sorted(set(TOY_LABELS)), tiny_bert, WORDS)
        from tailtune.training import predict_logits
        acc = (predict_logits(model, model.encode(TOY_TEXTS)).argmax(-1) ==
               torch.tensor([sorted(set(TOY_LABELS)).index(y) for y in TOY_LABELS])).float().mean()
        assert row["weight"] == pytest.approx(float(acc))
    members = [f for f in fits if f[0] == "prompt"]
    assert [n for _, n, _ in members[:2]] == [6, 6]  # PET: the labelled set
    # iPET generation 1: the labelled set plus at most 2 x (5 - 1) = 8 pseudo-labelled texts per class
    assert all(6 < n <= 6 + 3 * 8 for _, n, _ in members[2:4]) and len(members) == 4
    final = [f for f in fits if f[0] == "cls"]
    assert len(final) == 1
    _, n, soft = final[0]
    assert n == len(unlabeled) + len(train) and soft.shape == (n, 3)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
    assert (soft[-len(train):].max(1) == 1).all()  # the labelled texts keep their one-hot labels
    assert out["classifier"].predict(TOY_TEXTS[:3])


@pytest.mark.parametrize("budget", ["steps", "epochs"])
def test_ipet_generations_train_generation_0s_steps_or_its_epochs(tiny_bert, monkeypatch, budget):
    """PET's reference gives every generation the same optimisation steps; "epochs" passes over the grown sets."""
    runs = []
    real_fit = api.TailtuneClassifier.fit

    def record(self, *a, **kw):
        out = real_fit(self, *a, **kw)
        if self.preset == "prompt":
            r = self.train_result_
            evaluated = [h["step"] for h in r.history if "dev_macro_f1" in h]
            runs.append((len(a[0].texts), r.steps, r.planned_steps, evaluated))
        return out

    monkeypatch.setattr(api.TailtuneClassifier, "fit", record)
    train = tt.TextDataset(TOY_TEXTS[::2], TOY_LABELS[::2])  # 6 texts: one batch of 8 a step
    unlabeled = [t + " again" for t in TOY_TEXTS] * 4
    patterns = [Pattern("{text} it is {mask} .", WORDS), Pattern("{mask} : {text}", WORDS)]
    out = run_pet(train, tt.TextDataset(TOY_TEXTS, TOY_LABELS), unlabeled, patterns, tiny_bert, train_config=FAST,
                  final_preset="cls", final_train_config=FAST, max_length=64, generations=1,
                  generation_budget=budget, log=lambda s: None)
    assert out["generation_budget"] == budget and out["generations"] == 1
    first, grown = runs[:2], runs[2:]
    assert [r[:3] for r in first] == [(6, 2, 2)] * 2  # 2 epochs of one step
    assert all(n > 8 for n, *_ in grown)  # more than one batch: more steps per epoch
    if budget == "steps":
        assert all(r[1:] == first[0][1:] for r in grown)  # the same steps, evaluated at the same steps
    else:
        assert all(steps == planned == 2 * -(-n // 8) for n, steps, planned, _ in grown)
    with pytest.raises(tt.ConfigError, match="generation_budget"):
        run_pet(train, train, unlabeled, patterns, tiny_bert, generations=1, generation_budget="time")
    with pytest.raises(tt.ConfigError, match="pattern_weights='dev': choose one of zero-shot, uniform"):
        run_pet(train, train, unlabeled, patterns, tiny_bert, pattern_weights="dev")


def test_pet_command_saves_the_final_classifier(tiny_bert, tmp_path, capsys, monkeypatch):
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS, TOY_LABELS))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows + "\n")
    (tmp_path / "dev.tsv").write_text("text\tlabel\n" + rows + "\n")
    (tmp_path / "u.txt").write_text("\n".join(t + " too" for t in TOY_TEXTS) + "\n")
    (tmp_path / "w.json").write_text(json.dumps(WORDS))
    args = ["pet", "--train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "dev.tsv"), "--unlabeled",
            str(tmp_path / "u.txt"), "--pattern", "{text} it is {mask} .", "--pattern", "{mask} : {text}",
            "--verbalizer", str(tmp_path / "w.json"), "--backbone", tiny_bert, "--max-length", "64",
            "--epochs", "1", "--final-preset", "cls", "--final-backbone", tiny_bert, "--mlm-weight", "0.01",
            "--pattern-weights", "uniform", "--output", str(tmp_path / "out")]

    def no_zero_shot(*a):
        raise AssertionError("uniform pattern weights read no zero-shot accuracy")

    monkeypatch.setattr("tailtune.pet._zero_shot_accuracy", no_zero_shot)
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "pet.json").read_text())
    assert len(summary["patterns"]) == 2 and "ensemble_dev_accuracy" in summary and summary["mlm_weight"] == 0.01
    assert summary["pattern_weights"] == "uniform" and [p["weight"] for p in summary["patterns"]] == [1.0, 1.0]
    assert summary["final_backbone"] == tiny_bert
    assert tt.TailtuneClassifier.load(tmp_path / "out").predict(["good game"])
    assert "final classifier saved" in capsys.readouterr().out
    assert main(args) == 2  # the output exists: refused before any training
    three = ["--verbalizer", str(tmp_path / "w.json")] * 2  # 3 verbalizers for 2 patterns
    assert main([*args[:-2], *three, "--output", str(tmp_path / "o2")]) == 2
    assert "one per --pattern" in capsys.readouterr().err
    budget = ["--generations", "1", "--generation-budget", "time"]
    assert main([*args[:-2], *budget, "--output", str(tmp_path / "o3")]) == 2
    assert "generation_budget='time': choose one of steps, epochs" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_the_auxiliary_mlm_loss_is_mixed_in_and_teaches_the_mlm_head(tiny_bert):
    from tailtune.batch import collate
    from tailtune.stages.lm import MaskedLMAux
    from tailtune.training import ClassificationJob
    unlabeled = [t + " and the price was good" for t in TOY_TEXTS] * 3
    labels = sorted(set(TOY_LABELS))
    cfg = tt.TrainConfig(epochs=6, batch_size=8, lr=1e-3, progress=False, seed=3)
    model = tt.build_classifier(tt.config_from_preset("prompt", max_length=64), labels, tiny_bert,
                                WORDS)
    aux = MaskedLMAux(model, unlabeled, 0.25, 8, seed=3, max_length=64)
    job = ClassificationJob(model, tt.TextDataset(TOY_TEXTS, TOY_LABELS), cfg, model.encode_training, aux=aux)
    assert job.settings["aux"]["weight"] == 0.25
    model.eval()  # no dropout: the same draws give the same numbers
    idx = [0, 3, 5]
    batch = collate([job.encoded(0)[i] for i in idx], model.tokenizer.pad_token_id, torch.device("cpu"))
    task = model.training_loss(batch, job.targets[idx])
    mlm = aux.loss(idx, 4)
    assert float(aux.loss(idx, 4)) == pytest.approx(float(mlm))  # draws depend only on (seed, step, batch)
    assert float(aux.loss(idx, 5)) != pytest.approx(float(mlm))
    assert float(job.loss(idx, 4)) == pytest.approx(float(0.75 * task + 0.25 * mlm), rel=1e-5)
    before = float(aux.loss(idx, 4))

    clf = tt.TailtuneClassifier("prompt", tiny_bert, verbalizer=WORDS, max_length=64, train_config=cfg)
    clf.fit(TOY_TEXTS, TOY_LABELS, dev=tt.TextDataset(TOY_TEXTS, TOY_LABELS), unlabeled=unlabeled, mlm_weight=0.5)
    trained = MaskedLMAux(clf.model_.eval(), unlabeled, 0.5, 8, seed=3, max_length=64)
    assert float(trained.loss(idx, 4)) < before - 0.5  # the shared encoder and MLM head learnt the texts
    plain = tt.TailtuneClassifier("prompt", tiny_bert, verbalizer=WORDS, max_length=64, train_config=cfg)
    plain.fit(TOY_TEXTS, TOY_LABELS, dev=tt.TextDataset(TOY_TEXTS, TOY_LABELS))
    untaught = MaskedLMAux(plain.model_.eval(), unlabeled, 0.5, 8, seed=3, max_length=64)
    assert float(trained.loss(idx, 4)) < float(untaught.loss(idx, 4)) - 0.5


def test_the_auxiliary_mlm_loss_is_refused_before_training_where_it_cannot_work(tmp_path):
    for preset, weight, match in (("cls", 1e-4, "MLM head"), ("prompt", 1.0, "between 0 and 1"),
                                  ("prompt", 0.0, "no use for unlabelled texts")):  # before the backbone loads:
        clf = tt.TailtuneClassifier(preset, str(tmp_path / "none"), max_length=64, train_config=FAST)  # (none here)
        with pytest.raises(tt.ConfigError, match=match):
            clf.fit(TOY_TEXTS, TOY_LABELS, dev=tt.TextDataset(TOY_TEXTS, TOY_LABELS), unlabeled=["a text"],
                    mlm_weight=weight)
        assert not hasattr(clf, "model_")
    with pytest.raises(tt.ConfigError, match="mlm_weight"):
        run_pet(tt.TextDataset(TOY_TEXTS, TOY_LABELS), tt.TextDataset(TOY_TEXTS, TOY_LABELS), ["u"],
                [Pattern("{text} it is {mask} .", WORDS)], str(tmp_path / "none"), mlm_weight=1.0, log=lambda s: None)


def test_the_final_classifier_can_sit_on_another_backbone(tiny_bert, tiny_roberta):
    train = tt.TextDataset(TOY_TEXTS[::2], TOY_LABELS[::2])
    dev = tt.TextDataset(TOY_TEXTS, TOY_LABELS)
    out = run_pet(train, dev, [t + " again" for t in TOY_TEXTS], [Pattern("{text} it is {mask} .", WORDS)], tiny_bert,
                  train_config=FAST, final_preset="cls", final_train_config=FAST, final_backbone=tiny_roberta,
                  max_length=64, log=lambda s: None)
    assert out["final_backbone"] == out["classifier"].model_.backbone_name == tiny_roberta
    assert out["classifier"].predict(TOY_TEXTS[:2])
    with pytest.raises(tt.ConfigError, match="cannot load backbone"):
        run_pet(train, dev, ["x"], [Pattern("{text} it is {mask} .", WORDS)], tiny_bert, train_config=FAST,
                final_backbone="/nowhere/model", log=lambda s: None)
