"""LM-BFF demonstrations: layout, no self-demonstration, re-sampling, truncation, similarity, ensembles, saving."""
import json
import warnings

import pytest
import torch

import tailtune as tt
from tailtune.training import predict_logits

TEMPLATE = "{text} it is {mask} ."
WORDS = {"good": "good", "bad": "bad", "money": "price"}


def _model(tiny_bert, toy, **options):
    texts, labels = toy
    config = tt.config_from_preset("prompt", input_format="demonstrations", template=TEMPLATE,
                                   **{"max_length": 64, **options})
    model = tt.build_classifier(config, sorted(set(labels)), tiny_bert, WORDS)
    model.input_format.set_pool(tt.TextDataset(texts[:12], labels[:12]))
    return model


def _tokens(model, ids):
    return model.tokenizer.decode(ids)


def test_layout_one_demonstration_per_class_with_its_label_word(tiny_bert, toy):
    model = _model(tiny_bert, toy, demo_selection="random")
    tok = model.tokenizer
    enc = model.encode(["good game"], epoch=0)[0]
    ids = enc.input_ids
    assert ids[enc.position] == tok.mask_token_id and ids.count(tok.mask_token_id) == 1
    text = _tokens(model, ids)
    assert text.startswith("[CLS] good game it is [MASK]. [SEP]")
    demos = [d.strip() for d in text.split("[SEP]")[1:] if d.strip()]
    assert len(demos) == 3  # one per class, in label order, each with its label word where the [MASK] was
    assert [d.split(" it is ")[1].rstrip(" .") for d in demos] == ["bad", "good", "price"]
    pool = model.input_format.pool
    assert all(d.split(" it is ")[0] in pool["texts"] for d in demos)


def test_never_its_own_demonstration_and_redrawn_every_epoch(tiny_bert, toy):
    model = _model(tiny_bert, toy, demo_selection="random")
    pool = model.input_format.pool
    seen = set()
    for epoch in range(6):
        encoded = model.encode(pool["texts"], epoch=epoch, pool_index=list(range(12)))
        for i, e in enumerate(encoded):
            demos = [d.strip().split(" it is ")[0] for d in _tokens(model, e.input_ids).split("[SEP]")[1:] if d.strip()]
            assert pool["texts"][i] not in demos
            if i == 0:
                seen.add(tuple(demos))
    assert len(seen) > 1  # a new draw each epoch
    again = model.encode(pool["texts"], epoch=3, pool_index=list(range(12)))
    assert [e.input_ids for e in again] == [e.input_ids for e in model.encode(pool["texts"], epoch=3,
                                                                              pool_index=list(range(12)))]


def test_prediction_averages_the_sampled_sets(tiny_bert, toy):
    model = _model(tiny_bert, toy, demo_sets=5).eval()
    enc = model.encode(["good game", "oil price"])
    assert all(len(e.views) == 4 for e in enc)  # 5 sets: the encoding itself and 4 views
    averaged = predict_logits(model, enc)
    for i, e in enumerate(enc):
        rows = [tt.inputs.Encoded(e.input_ids, e.position), *e.views]
        torch.testing.assert_close(averaged[i], predict_logits(model, rows).mean(0), atol=1e-5, rtol=1e-5)


def test_the_input_is_kept_whole_and_demonstrations_shortened_or_dropped(tiny_bert, toy):
    model = _model(tiny_bert, toy, demo_selection="random", max_length=24)
    long_text = "the movie was great " * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = model.encode([long_text.strip()], epoch=0)[0]
    assert len(enc.input_ids) <= 24 and enc.input_ids[enc.position] == model.tokenizer.mask_token_id
    assert "good game it is [MASK]" not in _tokens(model, enc.input_ids)
    assert _tokens(model, enc.input_ids).startswith("[CLS] " + long_text.strip() + " it is [MASK]")
    message = " ".join(str(w.message) for w in caught)
    assert "dropped" in message and "of 3" in message


def test_similar_selection_draws_from_the_most_similar(tiny_bert, toy):
    model = _model(tiny_bert, toy, demo_selection="similar", demo_top=0.25)  # 4 per class: only the nearest
    for text in ["a good film", "terrible movie", "oil price"]:
        for epoch in range(3):
            e = model.encode([text], epoch=epoch)[0]
            demos = [d.strip().split(" it is ")[0] for d in _tokens(model, e.input_ids).split("[SEP]")[1:]
                     if d.strip()]
            assert text in demos  # the identical pool text is the most similar of its class, drawn every time


def test_the_pool_is_saved_and_loaded_and_export_refuses(tiny_bert, toy, tmp_path):
    texts, labels = toy
    clf = tt.TailtuneClassifier("prompt", tiny_bert, input_format="demonstrations", template=TEMPLATE,
                                verbalizer=WORDS, demo_sets=3, max_length=64,
                                train_config=tt.TrainConfig(epochs=2, batch_size=8, lr=1e-3, progress=False))
    clf.fit(texts, labels)
    clf.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "tailtune.json").read_text())
    pool = meta["input_pool"]  # the training examples (fit carved a dev split from the rest)
    assert len(pool["texts"]) >= 30 and set(zip(pool["texts"], pool["labels"])) <= set(zip(texts, labels))
    loaded = tt.TailtuneClassifier.load(tmp_path / "m")
    torch.testing.assert_close(torch.tensor(loaded.decision_function(texts[:5])),
                               torch.tensor(clf.decision_function(texts[:5])), atol=1e-5, rtol=1e-5)
    from tailtune.export import export_onnx
    with pytest.raises(tt.ConfigError, match="demonstrations"):
        export_onnx(tmp_path / "m", tmp_path / "onnx")


def test_options_are_checked_before_any_work(tiny_bert):
    with pytest.raises(tt.ConfigError, match="demo_top"):
        tt.config_from_preset("prompt", input_format="demonstrations", demo_top=0)
    with pytest.raises(tt.ConfigError, match="demo_selection"):
        tt.config_from_preset("prompt", input_format="demonstrations", demo_selection="nearest")
    config = tt.config_from_preset("prompt", input_format="demonstrations", max_length=64)
    model = tt.build_classifier(config, ["a", "b"], tiny_bert)
    with pytest.raises(tt.ConfigError, match="fit the classifier first"):
        model.encode(["x"])
