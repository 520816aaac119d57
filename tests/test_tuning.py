"""The parameter-efficient part of the 'what trains' axis (adapters, BitFit, soft prompts, task modules)."""
import numpy as np
import pytest
import torch

import tailtune as tt
from tailtune.backbone import load_tokenizer
from tailtune.tuning.routing import Route
from tailtune.batch import collate
from tiny import make_bert


def test_soft_template_syntax(tiny_model):
    tok = load_tokenizer(tiny_model)
    t = tt.Template("{soft:3} {text} {soft:it was} {mask} .")
    init = t.soft_init_ids(tok)
    assert init[:3] == [None] * 3 and init[3:] == tok(" it was", add_special_tokens=False)["input_ids"]
    enc = t.encode(tok, ["the movie " * 30], None, 20)[0]
    assert len(enc.input_ids) == 20 and len(enc.soft_positions) == len(init)
    assert enc.soft_positions[:3] == [1, 2, 3]  # right after [CLS]
    assert enc.soft_positions[-1] == enc.position - 1  # the soft words stand just before [MASK]
    with pytest.raises(tt.inputs.TemplateError, match="at least one"):
        tt.Template("{soft:0} {text} {mask}")


def test_soft_prompt_vectors_reach_the_encoder(tiny_bert):
    cfg = tt.config_from_preset("soft-prompt", soft_tokens=2, template="{text} {soft:it was} {mask} .")
    model = tt.build_classifier(cfg, ["good", "bad"], tiny_bert).eval()
    words = model.tokenizer(" it was", add_special_tokens=False)["input_ids"]
    emb = model.encoder.get_input_embeddings().weight
    torch.testing.assert_close(model.tuning.soft_prompt[2:], emb[words])  # initialised from the words
    batch = collate(model.encode(["the movie was great"]), model.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        before = model(**batch)
        model.tuning.soft_prompt.add_(torch.randn_like(model.tuning.soft_prompt))  # (a constant would vanish in LayerNorm)
        assert not torch.allclose(before, model(**batch))


def test_adapters_start_near_identity_and_sit_where_they_should(tiny_bert):
    plain = tt.build_classifier(tt.config_from_preset("cls"), ["a", "b"], tiny_bert).eval()
    houlsby = tt.build_classifier(tt.config_from_preset("adapter"), ["a", "b"], tiny_bert).eval()
    pfeiffer = tt.build_classifier(tt.config_from_preset("adapter-pfeiffer"), ["a", "b"], tiny_bert).eval()
    assert sorted(houlsby.tuning.adapters) == ["0_attn", "0_ffn", "1_attn", "1_ffn"]
    assert sorted(pfeiffer.tuning.adapters) == ["0_ffn", "1_ffn"]
    batch = collate(plain.encode(["the movie was great"]), 0, torch.device("cpu"))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    routed = lambda m: m.router.encode([Route(m.task)], ids, mask)  # noqa: E731
    with torch.no_grad():
        h0 = routed(plain)
        h1 = routed(houlsby)
        houlsby.tuning.adapters["0_ffn"].up.bias.normal_()  # (a constant would vanish in LayerNorm)
        h2 = routed(houlsby)
        outside = houlsby.encoder(input_ids=ids).last_hidden_state
    torch.testing.assert_close(h0, h1, atol=1e-3, rtol=0)  # near-identity
    assert (h2 - h0).abs().max() > 0.1  # the hook really sits in the forward pass
    torch.testing.assert_close(outside, h0)  # outside a routed pass the encoder is the plain model


def test_parameter_accounting(tiny_bert):
    full = tt.build_classifier(tt.config_from_preset("cls"), ["a", "b"], tiny_bert).parameter_counts()
    assert full["pct_of_backbone_without_head"] == pytest.approx(100.0)
    bitfit = tt.build_classifier(tt.config_from_preset("bitfit"), ["a", "b"], tiny_bert).parameter_counts()
    assert 0 < bitfit["pct_of_backbone_without_head"] < 5
    adapter = tt.build_classifier(tt.config_from_preset("adapter", adapter_size=4), ["a", "b"], tiny_bert)
    c = adapter.parameter_counts()
    assert c["trainable_without_head"] == 4 * (32 * 4 + 4 + 4 * 32 + 32)  # 4 adapters of 32->4->32


def test_task_module_refuses_another_backbone(tiny_bert, tmp_path, toy):
    texts, labels = toy
    clf = tt.TailtuneClassifier("adapter", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False))
    clf.fit(texts, labels).save(tmp_path / "task")
    module = (tmp_path / "task" / "module.safetensors").stat().st_size
    assert module < 100_000  # kilobytes: adapters + head only
    other = make_bert(tmp_path / "other-bert", seed=1)
    with pytest.raises(ValueError, match="a different model"):
        tt.Classifier.load(tmp_path / "task", backbone=other)
    same = tt.Classifier.load(tmp_path / "task", backbone=tiny_bert)
    assert same.labels == clf.labels_


def test_lora_starts_as_the_base_model(tiny_model):
    plain = tt.build_classifier(tt.config_from_preset("cls"), ["a", "b"], tiny_model).eval()
    lora = tt.build_classifier(tt.config_from_preset("lora", lora_r=2), ["a", "b"], tiny_model).eval()
    batch = collate(plain.encode(["the movie was great"]), plain.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        h0 = plain.encoder(input_ids=batch["input_ids"]).last_hidden_state
        h1 = lora.encoder(input_ids=batch["input_ids"]).last_hidden_state
    torch.testing.assert_close(h0, h1)  # B = 0 at the start
    c = lora.parameter_counts()
    assert c["trainable_without_head"] == 2 * 2 * (32 * 2 + 2 * 32)  # 2 layers x (query, value) x (A + B)
    with pytest.raises(ValueError, match="lora_targets"):
        tt.build_classifier(tt.config_from_preset("lora", lora_targets="nope"), ["a", "b"], tiny_model)


@pytest.mark.parametrize("trains", ["bitfit", "adapter", "lora", "prefix", "prompt"])
@pytest.mark.parametrize("head", ["mlp", "verbalizer"])
def test_every_mechanism_with_every_head_and_objective(trains, head, tiny_bert, toy):
    texts, labels = toy
    for objective in ({"objective": "focal", "focal_gamma": 2.0}, {"calibration": "eta-norm", "eta": 1.0}):
        clf = tt.TailtuneClassifier(
            "cls-prompt", tiny_bert, head=head, trains=trains,
            template="{soft:2} {text} it is about {mask} ." if trains == "prompt" else "{text} it is about {mask} .",
            train_config=tt.TrainConfig(epochs=1, batch_size=8, lr=1e-3, progress=False), **objective)
        clf.fit(texts, labels, dev=tt.TextDataset(texts[:6], labels[:6]))
        assert clf.train_result_.steps == 5 and all(torch.isfinite(torch.tensor(h["loss"])) for h in clf.train_result_.history)
        scores = clf.decision_function(texts[:3])
        assert scores.shape == (3, 3) and np.isfinite(scores).all()
