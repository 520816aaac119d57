"""Y-Tuning: label decoder over frozen features, triplet loss, cached features."""
import pytest
import torch

import tailtune as tt
from tailtune.objectives import triplet_loss
from tailtune.batch import collate
from tailtune.training import encode_features, pad_features, train


def _model(backbone, **kw):
    return tt.build_classifier(tt.config_from_preset("y-tuning", **kw), ["bad", "good", "money"],
                               backbone, verbalizer={"money": "price"})


def test_triplet_loss_by_hand():
    scores = torch.tensor([[2.0, 0.5, 1.8], [0.0, 3.0, 0.0]])
    target = torch.tensor([0, 1])
    # row 0: others 0.5 -> max(0, 1 - 2 + 0.5) = 0, 1.8 -> 0.8; row 1: both clear the margin
    assert triplet_loss(scores, target, margin=1.0).item() == pytest.approx((0.8 / 2 + 0) / 2)


def test_label_embeddings_start_from_label_words(tiny_bert):
    model = _model(tiny_bert)
    emb = model.encoder.get_input_embeddings().weight
    price = model.tokenizer.convert_tokens_to_ids("price")
    torch.testing.assert_close(model.head.labels[2], emb[price])
    two = _model(tiny_bert, label_vectors=2, decoder_width=16, decoder_heads=2)
    assert two.head.labels.shape == (6, 32) and not torch.equal(two.head.labels[0], two.head.labels[1])
    assert _model(tiny_bert, label_init="random").head.labels.shape == (3, 32)


def test_backbone_is_bit_identical_after_training(tiny_model, toy):
    texts, labels = toy
    model = _model(tiny_model)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    space = ["bad", "good", "money"]
    result = train(model, tt.TextDataset(texts, labels), tt.TrainConfig(epochs=15, batch_size=8, lr=3e-3, seed=1,
                                                                        progress=False))
    assert result.steps == 75
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())
    assert all(p.grad is None for p in model.encoder.parameters())  # never received a gradient
    pred = model(**collate(model.encode(texts), model.tokenizer.pad_token_id, torch.device("cpu"))).argmax(-1)
    assert (pred == torch.tensor([space.index(y) for y in labels])).float().mean() > 0.6


def test_cached_features_give_the_same_loss_and_training(tiny_bert, toy):
    texts, labels = toy
    target = torch.tensor([["bad", "good", "money"].index(y) for y in labels])
    model = _model(tiny_bert, decoder_dropout=0.1).train()
    enc = model.encode(texts)
    batch = collate(enc, model.tokenizer.pad_token_id, torch.device("cpu"))
    torch.manual_seed(0)
    uncached = model.loss(model(**batch), target)
    torch.manual_seed(0)
    cached = model.loss(model(**batch, features=pad_features(encode_features(model, enc, batch_size=5))), target)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
    # whole training runs agree too
    runs = []
    for cache in (True, False):
        torch.manual_seed(3)
        m = _model(tiny_bert, decoder_dropout=0.1)
        r = train(m, tt.TextDataset(texts, labels), tt.TrainConfig(epochs=2, batch_size=8, lr=3e-3, seed=1,
                                                                   progress=False, cache_features=cache))
        runs.append((r.history[-1]["loss"], m.head.labels.detach().clone()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-4)
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=1e-5, rtol=1e-4)


def test_only_frozen_feature_methods_cache(tiny_bert):
    assert _model(tiny_bert).frozen_features
    assert tt.build_classifier(tt.config_from_preset("linear-probe"), ["a", "b"], tiny_bert).frozen_features
    for preset in ("cls", "adapter", "lora", "prefix", "soft-prompt", "bitfit"):
        assert not tt.build_classifier(tt.config_from_preset(preset), ["a", "b"], tiny_bert).frozen_features


@pytest.mark.parametrize("pointer", ["linear", "task", "max"])
def test_label_pointers_score_each_label(tiny_bert, toy, pointer):
    texts, _ = toy
    model = _model(tiny_bert, label_pointer=pointer, decoder_width=16, decoder_heads=2)
    batch = collate(model.encode(texts[:4]), model.tokenizer.pad_token_id, torch.device("cpu"))
    assert model(**batch).shape == (4, 3)
    if pointer == "linear":  # starts as mean pooling over the LayerNorm output: every label alike
        torch.testing.assert_close(model.head.pointer_weight, torch.full((16,), 1 / 16))
    with pytest.raises(ValueError, match="label_pointer"):
        tt.config_from_preset("y-tuning", label_pointer="mean")


def test_dev_evaluation_reads_cached_features(tiny_bert, toy, monkeypatch):
    """fit() encodes the dev texts once for a frozen backbone; the scores equal the uncached ones."""
    texts, labels = toy
    clf = tt.TailtuneClassifier("y-tuning", tiny_bert, verbalizer={"money": "price"},
                                train_config=tt.TrainConfig(epochs=3, batch_size=8, lr=1e-3, seed=1, progress=False))
    calls = []
    import tailtune.api as api
    real = api.cached_features
    monkeypatch.setattr(api, "cached_features", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    clf.fit(texts, labels, dev=tt.TextDataset(texts[:10], labels[:10]))
    assert calls == [10]  # once, for the 10 dev texts, though dev was evaluated each epoch
    enc = clf.model_.encode(texts)
    from tailtune.training import predict_logits
    torch.testing.assert_close(predict_logits(clf.model_, enc, features=encode_features(clf.model_, enc)),
                               predict_logits(clf.model_, enc), atol=1e-5, rtol=1e-5)


def test_models_saved_before_the_pointer_option_load_with_the_task_pointer(tiny_bert, toy, tmp_path):
    """A tailtune 0.1 artefact (format 1: a flat configuration, written before the pointer option) loads."""
    import json
    texts, labels = toy
    clf = tt.TailtuneClassifier("y-tuning", tiny_bert, verbalizer={"money": "price"}, label_pointer="task",
                                train_config=tt.TrainConfig(epochs=1, seed=1, progress=False))
    clf.fit(texts, labels, dev=tt.TextDataset(texts, labels)).save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "tailtune.json").read_text())
    options = meta["config"].pop("options")
    del options["label_pointer"]
    meta["config"] = {"input_format": "plain", "head": "label-decoder", "trains": "head", "loss": "triplet",
                      "eta": None, "template": None, "lora_r": 8, **options, "max_length": meta["config"]["max_length"]}
    meta["format_version"] = 1
    (tmp_path / "m" / "tailtune.json").write_text(json.dumps(meta))
    loaded = tt.TailtuneClassifier.load(tmp_path / "m", device="cpu")
    assert loaded.model_.head.pointer == "task" and loaded.predict(texts) == clf.predict(texts)
