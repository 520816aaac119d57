"""Multi-task prompted training: tasks share the encoder and the MLM head itself; the result is a masked-LM
checkpoint that zero-shot prompting reads."""
import json

import pytest
import torch

import tailtune as tt
from tailtune.backbone import load_backbone
from tailtune.multiprompt import PromptTask, train_multitask_prompt
from tailtune.zeroshot import ZeroShotClassifier

SENTIMENT = (["the movie was great", "a good film", "great food", "bad food", "terrible movie", "an awful game"],
             ["pos", "pos", "pos", "neg", "neg", "neg"])
TOPIC = (["the market price", "stock earn news", "oil price", "good game", "the film was bad", "a movie"],
         ["money", "money", "money", "fun", "fun", "fun"])


def test_tasks_share_the_mlm_head_and_the_checkpoint_loads_as_a_masked_lm(tiny_bert, tmp_path):
    tasks = [PromptTask("sentiment", tt.TextDataset(*SENTIMENT), ["{text} it is {mask} .", "{mask} : {text}"],
                        {"pos": "good", "neg": "bad"}),
             PromptTask("topic", tt.TextDataset(*TOPIC), ["{text} it is about {mask} ."],
                        {"money": "price", "fun": "game"})]
    before = load_backbone(tiny_bert, with_mlm_head=True)
    lines = []
    summary = train_multitask_prompt(tasks, tiny_bert, tmp_path / "mt", tt.TrainConfig(epochs=20, batch_size=4,
                                     lr=1e-3, progress=False), max_length=32, log=lines.append)
    assert summary["steps"] > 0 and [t["name"] for t in summary["tasks"]] == ["sentiment", "topic"]
    assert json.loads((tmp_path / "mt" / "multiprompt.json").read_text())["tasks"][0]["templates"][1] == "{mask} : {text}"
    after = load_backbone(str(tmp_path / "mt"), with_mlm_head=True)
    assert not after.mlm.missing  # a complete masked-LM checkpoint: encoder and MLM head
    assert not torch.equal(after.mlm.dense.weight, before.mlm.dense.weight)  # the shared head trained
    assert not torch.equal(after.mlm.bias, before.mlm.bias)
    enc_b = dict(before.encoder.named_parameters())
    assert any(not torch.equal(p, enc_b[n]) for n, p in after.encoder.named_parameters())
    # zero-shot prompting with the saved checkpoint scores what the trained model scored: the checkpoint is it
    zs = ZeroShotClassifier(["pos", "neg"], str(tmp_path / "mt"), method="prompt", template="{text} it is {mask} .",
                            verbalizer={"pos": "good", "neg": "bad"}, calibrate=False, max_length=32)
    accuracy = sum(p == y for p, y in zip(zs.predict(SENTIMENT[0]), SENTIMENT[1])) / 6
    assert accuracy == pytest.approx(summary["tasks"][0]["train_accuracy"]) and accuracy > 0.5
    assert any("multi-task prompts: 2 tasks, 3 templates" in line for line in lines)


def test_bad_specs_are_refused_before_any_work(tiny_bert, tmp_path):
    with pytest.raises(tt.ConfigError, match="one or more templates"):
        train_multitask_prompt([PromptTask("a", tt.TextDataset(*SENTIMENT), [])], tiny_bert, tmp_path / "x")
    same = PromptTask("a", tt.TextDataset(*SENTIMENT), ["{text} {mask}"])
    with pytest.raises(tt.ConfigError, match="names must differ"):
        train_multitask_prompt([same, same], tiny_bert, tmp_path / "x")


def test_the_command_reads_a_yaml_spec(tiny_bert, tmp_path, capsys):
    from tailtune.cli import main
    (tmp_path / "s.tsv").write_text("text\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in zip(*SENTIMENT)) + "\n")
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in zip(*TOPIC)) + "\n")
    (tmp_path / "spec.yaml").write_text(
        "max_length: 32\ntasks:\n"
        "  - {name: sentiment, train: s.tsv, templates: ['{text} it is {mask} .'], verbalizer: {pos: good, neg: bad}}\n"
        "  - {name: topic, train: t.tsv, templates: '{text} it is about {mask} .', verbalizer: {money: price, fun: game}}\n")
    args = ["multitask-prompt", str(tmp_path / "spec.yaml"), "--backbone", tiny_bert, "--output", str(tmp_path / "o"),
            "--epochs", "1", "--batch-size", "4"]
    assert main(args) == 0
    assert "topic: 6 examples, 1 template(s)" in capsys.readouterr().out
    assert load_backbone(str(tmp_path / "o"), with_mlm_head=True).mlm.missing == []
    (tmp_path / "bad.yaml").write_text("tasks: [{name: a}]\n")
    assert main(["multitask-prompt", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "o2")]) == 2
    assert "needs tasks" in capsys.readouterr().err
