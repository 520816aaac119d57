import pytest
import torch
import torch.nn.functional as F

import tailtune as tt
from tailtune.objectives import eta_norm, focal_loss
from tailtune.batch import collate


def test_verbalizer_head_matches_full_mlm_head(tiny_model):
    """Scores equal the full-vocabulary MLM logits at [MASK], averaged per label word."""
    from transformers import AutoModelForMaskedLM
    words = {"good": ["good", "great"], "money": "market price"}
    model = tt.build_classifier(tt.config_from_preset("prompt"), ["good", "money"], tiny_model, words).eval()
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_model).eval()
    enc = model.encode(["the movie was great", "oil price news"])
    batch = collate(enc, model.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        ours = model(**batch)
        vocab_logits = mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    at_mask = vocab_logits[torch.arange(2), batch["position"]]  # (batch, vocab)
    ids = model.verbalizer.token_ids(model.tokenizer)
    expected = torch.stack([
        torch.stack([at_mask[:, w].mean(-1) for w in ids[y]]).mean(0) for y in ["good", "money"]], -1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_class_weights_give_the_scores(tiny_bert):
    model = tt.build_classifier(tt.config_from_preset("prompt"), ["good", "bad"], tiny_bert).eval()
    h = torch.randn(3, 32)
    w, b = model.head.class_weights()
    z = model.head.layer_norm(model.head.act(model.head.dense(h)))
    torch.testing.assert_close(model.head(h), z @ w.T + b)


def test_decoupled_embeddings_are_a_copy(tiny_bert):
    model = tt.build_classifier(tt.config_from_preset("prompt-ed"), ["good", "bad"], tiny_bert)
    emb = model.encoder.get_input_embeddings().weight
    assert model.head.decoder_weight is not emb
    torch.testing.assert_close(model.head.decoder_weight, emb)


@pytest.mark.parametrize("preset, options", [("cls-pt-ln", {}), ("auto", {"layer_norm": "pretrained"})])
def test_pretrained_layer_norm_is_copied(preset, options, tiny_bert, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    ln = mlm.cls.predictions.transform.LayerNorm
    with torch.no_grad():  # not the fresh γ = 1, β = 0, so that a fresh LayerNorm cannot pass for a copy
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    mlm.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path)
    model = tt.build_classifier(tt.config_from_preset(preset, **options), ["a", "b"], str(tmp_path))
    torch.testing.assert_close(model.head.layer_norm.weight, ln.weight)
    torch.testing.assert_close(model.head.layer_norm.bias, ln.bias)


def test_missing_mlm_head_warns(tiny_bert, tmp_path):
    from transformers import AutoModel
    AutoModel.from_pretrained(tiny_bert).save_pretrained(tmp_path)  # encoder only, no MLM head
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no pretrained MLM head"):
        tt.build_classifier(tt.config_from_preset("prompt"), ["good", "bad"], str(tmp_path))
    with pytest.warns(UserWarning, match="no pretrained MLM-head LayerNorm"):
        tt.build_classifier(tt.config_from_preset("cls-pt-ln"), ["good", "bad"], str(tmp_path))


def test_focal_loss():
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(focal_loss(logits, target, 0.0), F.cross_entropy(logits, target))
    p = F.softmax(logits, -1)[torch.arange(6), target]
    torch.testing.assert_close(focal_loss(logits, target, 2.0), (-(1 - p) ** 2 * p.log()).mean())


def test_eta_norm():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # norms 5 and 1
    logits = torch.tensor([[10.0, 2.0]])
    torch.testing.assert_close(eta_norm(logits, w, 1.0), torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(eta_norm(logits, w, 0.0), logits)


def test_eta_norm_applies_at_prediction_only(tiny_bert):
    model = tt.build_classifier(tt.config_from_preset("cls-eta-norm"), ["a", "b"], tiny_bert).eval()
    raw = torch.randn(2, 2)
    norms = model.head.out.weight.norm(dim=-1)
    torch.testing.assert_close(model.calibrate(raw), raw / norms ** 1.1)


def test_pooling_readouts_leave_padding_out(tiny_bert):
    from tailtune.readouts import MaxPool, MeanPool
    hidden = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [100.0, 100.0]]])  # (1, 3, 2); the last token is padding
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(MeanPool()(hidden, mask, None)[0], torch.tensor([[2.0, -1.0]]))
    torch.testing.assert_close(MaxPool()(hidden, mask, None)[0], torch.tensor([[3.0, 2.0]]))
    layered = hidden[:, :, None].expand(1, 3, 4, 2)  # (batch, seq, layers, hidden): every layer pooled alike
    torch.testing.assert_close(MeanPool()(layered, mask, None)[0], torch.tensor([[2.0, -1.0]]).expand(1, 4, 2))
    model = tt.build_classifier(tt.config_from_preset("cls", readout="mean"), ["a", "b"], tiny_bert).eval()
    one = model.encode(["the movie was great"])
    two = model.encode(["the movie was great", "a bad game and the film was terrible news"])
    from tailtune.training import predict_logits
    torch.testing.assert_close(predict_logits(model, one), predict_logits(model, two)[:1], atol=1e-5, rtol=1e-4)


def test_auto_readout_follows_what_the_backbone_declares(tiny_bert, tmp_path):
    import json
    import shutil
    shutil.copytree(tiny_bert, tmp_path / "st")
    (tmp_path / "st" / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "st" / "1_Pooling").mkdir()
    (tmp_path / "st" / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}))
    auto = tt.ClassifierConfig()
    assert tt.build_classifier(auto, ["a", "b"], str(tmp_path / "st")).config.readout == "max"
    assert tt.build_classifier(auto, ["a", "b"], tiny_bert).config.readout == "cls"  # declares nothing
    assert tt.build_classifier(tt.config_from_preset("cls"), ["a", "b"], str(tmp_path / "st")).config.readout == "cls"
