"""Hyper-parameter search (tailtune tune): a tiny grid finds the better learning rate; the YAML it writes
is a preset entry `tailtune run` takes as it is."""
import pytest
import yaml

from tailtune.cli import main
from tailtune.hparams import parse_dimension
from test_experiment import _write_data

pytest.importorskip("optuna")


def test_a_tiny_search_finds_the_better_of_two_learning_rates(tiny_bert, tmp_path, capsys):
    _write_data(tmp_path / "data")
    out = tmp_path / "best.yaml"
    args = ["tune", "--train", str(tmp_path / "data" / "train.tsv"), "--dev", str(tmp_path / "data" / "test.tsv"),
            "--backbone", tiny_bert, "--preset", "cls", "--epochs", "8", "--batch-size", "8", "--no-progress",
            "--search", "lr=1e-7,3e-3", "--trials", "5", "--output", str(out), "--trials-json", str(tmp_path / "t.json")]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert said.count("trial ") == 2  # a grid of 2 choices: both, once, however many trials were allowed
    best = yaml.safe_load(out.read_text())
    assert best["presets"]["tuned"]["train"]["lr"] == 3e-3 and best["presets"]["tuned"]["preset"] == "cls"
    assert best["presets"]["tuned"]["train"]["epochs"] == 8  # the shared settings travel with it
    # reusable as it is: an experiment with this preset entry resolves (and would train) with these settings
    from tailtune.experiment import resolve
    cfg = {"backbone": tiny_bert, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "o"),
           "datasets": {"toy": {"train": str(tmp_path / "data" / "train.tsv"),
                                "test": str(tmp_path / "data" / "test.tsv")}},
           "presets": best["presets"], "runs": [{"presets": ["tuned"], "seeds": [1]}]}
    plan, _ = resolve(cfg, "toy", "tuned", 1)
    assert plan.train_config.lr == 3e-3 and plan.base == "cls"


def test_search_spaces_parse_and_bad_ones_are_refused(tiny_bert, tmp_path, capsys):
    assert parse_dimension("lr=1e-5:1e-3:log").log and parse_dimension("epochs=2:10").integer
    assert parse_dimension("head=mlp,cosine").choices == ("mlp", "cosine")
    assert not parse_dimension("focal_gamma=0.5:3").integer
    _write_data(tmp_path / "data")
    base = ["tune", "--train", str(tmp_path / "data" / "train.tsv"), "--dev", str(tmp_path / "data" / "test.tsv"),
            "--backbone", tiny_bert, "--preset", "cls"]
    for space, message in (("lr=1e-3:1e-5", "need LOW < HIGH"), ("lr", "write NAME=LOW:HIGH"),
                           ("lora_r=4,8", "'lora_r' belongs to trains='lora'")):
        assert main([*base, "--search", space]) == 2
        assert message in capsys.readouterr().err


def test_the_same_search_on_ray_tune_finds_the_same_learning_rate(tiny_bert, tmp_path, capsys):
    pytest.importorskip("ray")
    import json
    import ray
    _write_data(tmp_path / "data")
    out = tmp_path / "best.yaml"
    args = ["tune", "--train", str(tmp_path / "data" / "train.tsv"), "--dev", str(tmp_path / "data" / "test.tsv"),
            "--backbone", tiny_bert, "--preset", "cls", "--epochs", "8", "--batch-size", "8", "--no-progress",
            "--search", "lr=1e-7,3e-3", "--output", str(out), "--trials-json", str(tmp_path / "t.json"),
            "--ray", "local"]
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        assert main(args) == 0
    finally:
        ray.shutdown()
    trials = json.loads((tmp_path / "t.json").read_text())
    assert trials["backend"] == "ray" and sorted(t["params"]["lr"] for t in trials["trials"]) == [1e-7, 3e-3]
    assert yaml.safe_load(out.read_text())["presets"]["tuned"]["train"]["lr"] == 3e-3


def test_unlabeled_texts_reach_every_trial_and_a_preset_without_a_use_for_them_is_refused_first(
        tiny_bert, tmp_path, capsys, monkeypatch):
    import tailtune.api
    _write_data(tmp_path / "data")
    (tmp_path / "more.txt").write_text("a new text\nanother one here\n")
    base = ["tune", "--train", str(tmp_path / "data" / "train.tsv"), "--dev", str(tmp_path / "data" / "test.tsv"),
            "--backbone", tiny_bert, "--epochs", "1", "--batch-size", "8", "--no-progress", "--search", "lr=1e-3",
            "--unlabeled", str(tmp_path / "more.txt"), "--output", str(tmp_path / "best.yaml")]
    assert main([*base, "--preset", "cls"]) == 2
    said = capsys.readouterr()
    assert "no use for unlabelled texts" in said.err and "trial" not in said.out
    seen, fit = [], tailtune.api.TailtuneClassifier.fit

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("unlabeled"), kwargs.get("mlm_weight")))
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(tailtune.api.TailtuneClassifier, "fit", spy)
    assert main([*base, "--preset", "prompt", "--mlm-weight", "0.5"]) == 0
    assert seen == [(["a new text", "another one here"], 0.5)]


def test_label_descriptions_reach_every_trial_and_unknown_labels_are_refused_first(tiny_bert, tmp_path, capsys,
                                                                                   monkeypatch):
    import json
    import tailtune.api
    _write_data(tmp_path / "data")
    out = tmp_path / "best.yaml"
    base = ["tune", "--train", str(tmp_path / "data" / "train.tsv"), "--dev", str(tmp_path / "data" / "test.tsv"),
            "--backbone", tiny_bert, "--preset", "cls", "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--search", "lr=1e-3", "--output", str(out)]
    (tmp_path / "bad.json").write_text(json.dumps({"cheap": "It was cheap ."}))
    assert main([*base, "--descriptions", str(tmp_path / "bad.json")]) == 2
    said = capsys.readouterr()
    assert "labels the training data does not have: ['cheap']" in said.err and "trial" not in said.out
    seen, fit = [], tailtune.api.TailtuneClassifier.fit

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("descriptions"), kwargs.get("description_copies")))
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(tailtune.api.TailtuneClassifier, "fit", spy)
    (tmp_path / "good.json").write_text(json.dumps({"good": "It was great ."}))
    assert main([*base, "--descriptions", str(tmp_path / "good.json"), "--description-template", "about {label}",
                 "--description-copies", "2"]) == 0
    assert seen == [({"good": "It was great .", "bad": "about bad", "money": "about money"}, 2)]
    assert "every trial trained with label descriptions (2 copies each)" in out.read_text()
