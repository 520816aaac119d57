"""Language-model adaptation (tailtune adapt-lm) on a tiny random BERT."""
import dataclasses
import json

import pytest
import torch

import tailtune as tt
from tailtune.backbone import load_backbone
from tailtune.stages.lm import AdaptConfig, adapt_lm, mask_batch

TEXT = "\n".join(["the market price of oil was good news", "the film was a great movie",
                  "a bad game for the team", "what is the price of the stock",
                  "who was the person in the city", "the food was terrible and the film was bad"] * 12)


def _cfg(tiny_bert, tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "text.txt").write_text(TEXT)
    return AdaptConfig(**{"data": [str(tmp_path / "text.txt")], "output": str(tmp_path / "adapted"),
                          "backbone": tiny_bert, "steps": 30, "batch_size": 8, "max_length": 16, "lr": 1e-2,
                          "eval_sequences": 12, "save_every": 10, "seed": 1, **kw})


def test_masking_follows_bert(tiny_bert):
    tok = load_backbone(tiny_bert).tokenizer
    b = mask_batch([[9, 10, 11, 12, 13, 14, 15, 16] * 4] * 64, tok, 0.15, torch.Generator().manual_seed(0))
    masked = b["labels"] != -100
    assert 0.1 < masked[:, 1:-1].float().mean() < 0.2
    assert not masked[:, 0].any() and not masked[:, -1].any()  # never [CLS] / [SEP]
    share_mask = (b["input_ids"][masked] == tok.mask_token_id).float().mean()
    assert 0.7 < share_mask < 0.9


def test_adapt_lm_learns_saves_and_loads(tiny_bert, tmp_path):
    report = adapt_lm(_cfg(tiny_bert, tmp_path), log=lambda *_: None)
    assert report["after"]["loss"] < report["before"]["loss"]
    assert report["after"]["top5"] >= report["before"]["top5"]
    out = tmp_path / "adapted"
    assert json.loads((out / "adapt_lm.json").read_text())["steps_done"] == 30
    assert not (out / "checkpoint").exists()
    bb = load_backbone(str(out), with_mlm_head=True)  # round trip: an ordinary HF model with its head
    assert bb.mlm.missing == []
    base = load_backbone(tiny_bert)
    changed = [n for (n, p), (_, q) in zip(bb.encoder.named_parameters(), base.encoder.named_parameters())
               if not torch.equal(p, q)]
    assert changed  # the encoder was adapted (trains=all)
    clf = tt.build_classifier(tt.config_from_preset("prompt"), ["good", "bad"], str(out))
    assert clf.head.dense.weight.shape == (32, 32)


def test_head_only_keeps_the_encoder(tiny_bert, tmp_path):
    adapt_lm(_cfg(tiny_bert, tmp_path, trains="head", steps=10), log=lambda *_: None)
    base, adapted = load_backbone(tiny_bert), load_backbone(str(tmp_path / "adapted"))
    for (n, p), (_, q) in zip(base.encoder.named_parameters(), adapted.encoder.named_parameters()):
        assert torch.equal(p, q), n


def test_resume_gives_the_same_model(tiny_bert, tmp_path):
    straight = adapt_lm(_cfg(tiny_bert, tmp_path / "a"), log=lambda *_: None)
    cfg = _cfg(tiny_bert, tmp_path / "b")
    # an interrupted run: stop after the step-20 checkpoint, then run again
    import tailtune.loop as loop
    real = loop.save_checkpoint

    class Stop(Exception):
        pass

    def save_then_stop(directory, tensors, state):
        real(directory, tensors, state)
        if state["step"] == 20:
            raise Stop
    loop.save_checkpoint = save_then_stop
    try:
        adapt_lm(cfg, log=lambda *_: None)
    except Stop:
        pass
    finally:
        loop.save_checkpoint = real
    assert json.loads((tmp_path / "b" / "adapted" / "checkpoint" / "state.json").read_text())["step"] == 20
    with pytest.raises(tt.TailtuneError, match="--resume"):  # a second run without --resume is refused
        adapt_lm(cfg, log=lambda *_: None)
    logs = []
    resumed = adapt_lm(dataclasses.replace(cfg, resume=True), log=logs.append)
    assert any("resuming" in m and "step 20" in m for m in logs)
    assert resumed["after"]["loss"] == straight["after"]["loss"]
    a = load_backbone(str(tmp_path / "a" / "adapted")).encoder.state_dict()
    b = load_backbone(str(tmp_path / "b" / "adapted")).encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_adapt_lm_and_pretrain_prompt(tiny_bert, tmp_path, capsys):
    from tailtune.cli import main
    (tmp_path / "text.txt").write_text(TEXT)
    assert main(["adapt-lm", "--data", str(tmp_path / "text.txt"), "--output", str(tmp_path / "lm"),
                 "--backbone", tiny_bert, "--steps", "4", "--batch-size", "8", "--max-length", "16",
                 "--eval-sequences", "8"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["adapt-lm", "--data", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "lm2"),
                 "--backbone", tiny_bert]) == 2
    assert "not found" in capsys.readouterr().err
    docs = "\n".join(f"Firm {i} sold oil. Prices of firm {i} rose. The film {i} was good. Team {i} lost the game."
                     for i in range(6))
    (tmp_path / "docs.txt").write_text(docs)
    assert main(["pretrain-prompt", "--task", "multiple_choice", "--data", str(tmp_path / "docs.txt"),
                 "--output", str(tmp_path / "prompt"), "--backbone", str(tmp_path / "lm"), "--examples", "16",
                 "--dev-examples", "8", "--soft-tokens", "2", "--epochs", "1", "--no-progress"]) == 0
    assert (tmp_path / "prompt" / "prompt.safetensors").is_file()
