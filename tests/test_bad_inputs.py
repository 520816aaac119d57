"""Bad inputs, tried through the command line and the API: each case asserts the message (or the
documented handling), and that nothing was trained or saved when it should not be."""
import json
import os
import re
import warnings

import numpy as np
import pytest
import torch
import yaml

import tailtune as tt
from tailtune.cli import main
from conftest import TOY_LABELS, TOY_TEXTS

ROWS = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS * 3, TOY_LABELS * 3))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + ROWS + "\n")
    (tmp_path / "test.tsv").write_text("text\tlabel\n" + ROWS + "\n")
    return tmp_path


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def train_args(files, backbone, *extra, output=None):
    return ["train", "--train", files / "train.tsv", "--backbone", backbone, "--output", output or files / "m",
            "--epochs", "1", "--batch-size", "8", "--no-progress", *extra]


# ---------------------------------------------------------------- train: refused before any training

@pytest.mark.parametrize("extra,message", [
    (["--preset", "prompt", "--template", "{text} no mask"], "exactly one {mask}"),
    (["--template", "{text} it is {mask} ."], "'template' belongs to input_format='template'.*input_format='plain'"),
    (["--trains", "adapter", "--lora-r", "4"], "'lora_r' belongs to trains='lora'.*trains='adapter'"),
    (["--eta", "1.2"], "'eta' belongs to calibration='eta-norm'"),
    (["--max-length", "1000"], "max_length=1000 is more than backbone .* can read \\(128 positions\\)"),
    (["--epochs", "0"], "epochs=0(\\.0)?: must be a number > 0"),
    (["--grad-accum", "0"], "grad_accum=0: must be a number > 0"),
    (["--warmup-ratio", "1.5"], "warmup_ratio=1.5: must be in \\[0, 1\\)"),
    (["--theta", "2"], "0 < theta <= 1"),
    (["--head", "verbalizer"], "needs an input with one"),
    (["--preset", "prompt", "--readout", "cls"], "needs readout 'mask'"),
    (["--preset", "cls", "--head", "label-decoder"], "reads a sequence, but readout='cls' gives a vector"),
    (["--preset", "y-tuning", "--decoder-width", "30", "--decoder-heads", "4"], "not divisible"),
    (["--adapter-size", "0", "--trains", "adapter"], "adapter_size=0: must be >= 1"),
    (["--preset", "soft-prompt", "--soft-tokens", "0", "--template", "{text} {mask} ."], "trains='prompt' trains soft"),
])
def test_train_refuses_bad_options_before_training(tiny_bert, files, capsys, extra, message):
    rc, out, err = cli(capsys, *train_args(files, tiny_bert, *extra))
    assert rc == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err  # one line
    assert __import__("re").search(message, err), err
    assert not re.search(r"step \d+/\d+", out) and not (files / "m").exists()  # nothing trained, nothing written


def test_device_that_is_not_there(tiny_bert, files, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--device", "cuda"))
    assert rc == 2 and "no usable CUDA GPU" in err and "--device cpu" in err


def test_unknown_preset_and_backbone(tiny_bert, files, capsys):
    with pytest.raises(SystemExit):  # argparse lists the choices
        main(["train", "--train", str(files / "train.tsv"), "--output", str(files / "m"), "--preset", "clss"])
    assert "invalid choice: 'clss'" in capsys.readouterr().err
    rc, _, err = cli(capsys, *train_args(files, str(files / "no-such-model")))
    assert rc == 2 and "cannot load backbone" in err


def test_data_problems_found_before_training(tiny_bert, files, capsys):
    (files / "bad_test.tsv").write_text("text\tlabel\nthe film\tunseen\n")
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--test", files / "bad_test.tsv"))
    assert rc == 2 and "test split has 1 label(s) never seen in training: 'unseen'" in err
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--dev", files / "bad_test.tsv"))
    assert rc == 2 and "dev split" in err
    (files / "one.tsv").write_text("text\tlabel\na\tx\nb\tx\nc\tx\n")
    rc, _, err = cli(capsys, "train", "--train", files / "one.tsv", "--backbone", tiny_bert, "--output", files / "m")
    assert rc == 2 and "single class" in err
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--text-col", "sentence"))
    assert rc == 2 and "no text column 'sentence'" in err and "with --text-col" in err
    assert not (files / "m").exists()


def test_verbalizer_problems(tiny_bert, files, capsys):
    (files / "v.json").write_text('{"good": "good",\n "bad": }')
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--preset", "prompt", "--verbalizer", files / "v.json"))
    assert rc == 2 and "v.json, line 2 column" in err and "not valid JSON" in err
    (files / "v.json").write_text('{"good": "good", "nope": "x"}')
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--preset", "prompt", "--verbalizer", files / "v.json"))
    assert rc == 2 and "not in the label space: ['nope']" in err
    (files / "v.json").write_text('{"good": "good"}')
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--verbalizer", files / "v.json"))
    assert rc == 2 and "head='cosine' uses none" in err
    with pytest.warns(UserWarning, match="no word for 2 label\\(s\\).*'bad' -> 'bad'"):  # a label left out: said
        tt.Verbalizer(["bad", "good", "money"], {"good": "great"})


def test_output_that_cannot_be_written(tiny_bert, files, capsys):
    (files / "afile").write_text("x")
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, output=files / "afile"))
    assert rc == 2 and "exists and is a file" in err
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, output=files / "afile" / "sub"))
    assert rc == 2 and "cannot write into" in err
    (files / "full").mkdir()
    (files / "full" / "keep.txt").write_text("precious")
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, output=files / "full"))
    assert rc == 2 and "--overwrite" in err and (files / "full" / "keep.txt").read_text() == "precious"


def test_resume_without_checkpoint_and_checkpoint_without_resume(tiny_bert, files, capsys):
    rc, _, err = cli(capsys, *train_args(files, tiny_bert, "--resume"))
    assert rc == 2 and "nothing to resume" in err
    (files / "m" / "checkpoint").mkdir(parents=True)
    (files / "m" / "checkpoint" / "state.json").write_text('{"step": 3}')
    rc, _, err = cli(capsys, *train_args(files, tiny_bert))
    assert rc == 2 and "--resume" in err and "--overwrite" in err


def test_a_diverging_run_stops_and_saves_nothing(tiny_bert, files, capsys):
    rc, out, err = cli(capsys, *train_args(files, tiny_bert, "--lr", "1e10", "--head-lr", "1e10", "--epochs", "3"))
    assert rc == 2, err
    assert "training diverged at step" in err and "learning rate 10x lower" in err and "lr 1e+10" in err
    assert not (files / "m" / "tailtune.json").exists() and not (files / "m" / "model.safetensors").exists()


# ---------------------------------------------------------------- data files

@pytest.mark.parametrize("name,content,message", [
    ("d.tsv", 'text\tlabel\nfine\ta\n"broken quote\tb\nnext row\tc\nlast\td\n',
     "line 3: a quote opened on this line is not closed before line 5 \\(the end of the file\\)"),
    ("d.tsv", 'text\tlabel\nfine\ta\n"broken quote\tb\nnext "row\tc\nlast\td\n',
     "line 3: a quote opened on this line is not closed before line 4"),
    ("d.csv", 'text,label\nfine,a\n"broken, quote,b\nnext row,c\nlast,d\n', "line 3: a quote opened"),
    ("d.jsonl", '{"text": ["a", "b"], "label": "x"}\n', "line 1: column 'text' holds a list"),
    ("d.jsonl", '{"text": null, "label": "x"}\n', "column 'text' holds a null"),
    ("d.jsonl", '{"text": "a", "label": true}\n', "column 'label' holds a bool"),
    ("d.jsonl", '{"text": "a", "label": {"x": 1}}\n', "column 'label' holds a dict"),
    ("d.jsonl", '["a", "x"]\n', "line 1: expected a JSON object per line, found a list"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "line 2: not valid JSON"),
    ("d.tsv", "", "the file is empty"),
    ("d.tsv", "text\tlabel\nfine\ta\nno label field\n", "line 3: expected 2 fields"),
    ("d.tsv", "text\tlabel\n   \ta\n", "line 2: empty text"),
    ("d.tsv", "text\tlabel\nfine\t \n", "line 2: empty label"),
    ("d.xlsx", "x", "unsupported file type '.xlsx'"),
])
def test_bad_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(tt.DataError, match=message):
        tt.read_dataset(path)


def test_encoding_bom_and_a_legit_multiline_field(tmp_path):
    (tmp_path / "latin.tsv").write_bytes("text\tlabel\ncaf\xe9\ta\n".encode("latin-1"))
    with pytest.raises(tt.DataError, match="latin.tsv, line 2: not UTF-8"):
        tt.read_dataset(tmp_path / "latin.tsv")
    (tmp_path / "bom.tsv").write_bytes("\ufefftext\tlabel\nfine\ta\n".encode("utf-8"))
    assert tt.read_dataset(tmp_path / "bom.tsv").texts == ["fine"]  # a byte-order mark is accepted
    (tmp_path / "ml.csv").write_text('text,label\n"two\nlines",a\nnext,b\n')
    assert tt.read_dataset(tmp_path / "ml.csv").texts == ["two\nlines", "next"]  # quoted newlines stay legal


def test_duplicates_are_reported_and_kept_out_of_the_carved_dev_split():
    texts = [f"text {i}" for i in range(40)] + ["same"] * 6 + ["clash", "clash"]
    labels = ["a"] * 20 + ["b"] * 20 + ["a"] * 6 + ["a", "b"]
    ds = tt.TextDataset(texts, labels, source="train.tsv")
    with pytest.warns(UserWarning, match="2 text\\(s\\) occur more than once \\(8 rows\\), 1 of them with different"):
        from tailtune.data import check_trainable
        check_trainable(ds)
    for seed in range(10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train, dev = tt.stratified_split(ds, 0.2, seed)
        assert not set(dev.texts) & set(train.texts)


def test_no_dev_example_left_is_said_not_silent(tiny_bert, files, capsys):
    # every toy text occurs three times, so every text carved for dev is a copy of a training text: no dev is left
    rc, out, err = cli(capsys, *train_args(files, tiny_bert, "--preset", "cls"))
    assert rc == 0, err
    assert "no dev example: none was left after carving" in err and "give a dev set (--dev)" in err
    assert re.search(r"no dev set: the last step kept \(\d+; \d+ s\)", out)
    assert "best dev macro-F1 None" not in out
    # with a dev set the line gives its score
    (files / "dev.tsv").write_text("text\tlabel\n" + ROWS + "\n")
    rc, out, err = cli(capsys, *train_args(files, tiny_bert, "--preset", "cls", "--dev", files / "dev.tsv",
                                           output=files / "m2"))
    assert rc == 0 and "no dev example" not in err
    assert re.search(r"best dev macro-F1 [01]\.\d{4} at step \d+ of \d+", out)


# ---------------------------------------------------------------- predict

@pytest.fixture
def model_dir(tiny_bert, files, capsys):
    assert cli(capsys, *train_args(files, tiny_bert))[0] == 0
    return files / "m"


def test_predict_options_after_texts_and_ids(model_dir, files, capsys):
    rc, out, _ = cli(capsys, "predict", model_dir, "the film was bad", "--device", "cpu", "oil price")
    assert rc == 0 and [json.loads(x)["id"] for x in out.splitlines()] == [0, 1]
    (files / "in.tsv").write_text("id\ttext\nq7\tthe film was bad\nq8\t\nq9\t   \nq10\toil price\n")
    rc, out, err = cli(capsys, "predict", model_dir, "--data", files / "in.tsv")
    rows = [json.loads(x) for x in out.splitlines()]
    assert rc == 0 and [r["id"] for r in rows] == ["q7", "q8", "q9", "q10"]  # blank rows still come out
    assert "2 row(s)" in err and "empty text" in err and "predicted as an empty input" in err
    (files / "plain.tsv").write_text("text\nthe film was bad\n\noil price\n")
    rc, out, _ = cli(capsys, "predict", model_dir, "--data", files / "plain.tsv")
    assert rc == 0 and [json.loads(x)["id"] for x in out.splitlines()] == [0, 1, 2]  # the row number
    rc, out, _ = cli(capsys, "predict", model_dir, "the film was bad", "oil price", "--probabilities")
    for row in map(json.loads, out.splitlines()):  # every class's probability, as `tailtune serve` answers
        probs = row["probabilities"]
        assert set(probs) == set(TOY_LABELS) and sum(probs.values()) == pytest.approx(1, abs=1e-5)
        assert max(probs, key=probs.get) == row["label"] and probs[row["label"]] == row["score"]


def test_predict_usage_errors(model_dir, capsys):
    rc, _, err = cli(capsys, "predict", model_dir)
    assert rc == 2 and "give texts" in err
    rc, _, err = cli(capsys, "predict", model_dir, "x", "--task", "t")
    assert rc == 2 and "is a single classifier" in err
    # a plain text file is one text per line: fine for predict, refused where labels are needed
    (model_dir.parent / "lines.txt").write_text("good game\n\nthe oil price\n")
    rc, out, err = cli(capsys, "predict", model_dir, "--data", model_dir.parent / "lines.txt")
    assert rc == 0 and [json.loads(line)["text"] for line in out.splitlines()] == ["good game", "", "the oil price"]
    rc, _, err = cli(capsys, "evaluate", model_dir, "--data", model_dir.parent / "lines.txt")
    assert rc == 2 and "one text per line and nothing else, but this needs a label" in err
    for flag, value, message in [("--exit-curve", "0.1,abc", "'abc' in '0.1,abc': give comma-separated numbers"),
                                 ("--exit-batch-sizes", "1,6.4", "'6.4' in '1,6.4': give comma-separated whole")]:
        with pytest.raises(SystemExit):
            main(["evaluate", str(model_dir), "--data", str(model_dir.parent / "test.tsv"), flag, value])
        assert message in capsys.readouterr().err


def test_export_without_the_onnx_packages(model_dir, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    rc, _, err = cli(capsys, "export", model_dir, "--output", tmp_path / "onnx")
    assert rc == 2 and "need onnxscript" in err and "tailtune[onnx]" in err
    assert not (tmp_path / "onnx").exists()  # refused before any work


# ---------------------------------------------------------------- saved artefacts

def test_damaged_and_edited_artefacts_are_refused(model_dir, capsys, tmp_path):
    import shutil
    for case in ("corrupt", "labels", "other-save", "json", "newer", "nan"):
        d = tmp_path / case
        shutil.copytree(model_dir, d)
        meta = json.loads((d / "tailtune.json").read_text())
        if case == "corrupt":
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(data[:len(data) // 2])
            message = "damaged or incomplete"
        elif case == "labels":
            meta["labels"] = list(reversed(meta["labels"]))
            message = "label order differs"
        elif case == "other-save":
            meta["save_id"] = "0" * 32
            message = "come from different saves"
        elif case == "json":
            (d / "tailtune.json").write_text("{\n  \"labels\": [,\n}")
            message = "tailtune.json, line 2 column .*not valid JSON"
        elif case == "newer":
            meta["format_version"] = 99
            message = "newer tailtune"
        else:
            from safetensors.torch import load_file, save_model  # noqa: F401
            from safetensors import safe_open
            with safe_open(str(d / "model.safetensors"), "pt") as f:
                stamp = f.metadata()
            tensors = load_file(str(d / "model.safetensors"))
            name = next(k for k, t in tensors.items() if k.startswith("head.") and t.is_floating_point() and t.numel())
            tensors[name] = torch.full_like(tensors[name], float("nan"))
            from safetensors.torch import save_file
            save_file(tensors, str(d / "model.safetensors"), metadata=stamp)
            message = "non-finite weights"
        if case not in ("corrupt", "json", "nan"):
            (d / "tailtune.json").write_text(json.dumps(meta))
        rc, _, err = cli(capsys, "predict", d, "the film")
        assert rc == 2 and __import__("re").search(message, err), (case, err)


def test_module_on_a_backbone_whose_upper_layers_differ(tiny_bert, toy, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    texts, labels = toy
    clf = tt.TailtuneClassifier("adapter", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False))
    clf.fit(texts, labels).save(tmp_path / "task")
    other = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    with torch.no_grad():
        other.bert.encoder.layer[1].output.dense.weight.mul_(1.01)  # same embeddings, another top layer
    other.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "other")
    with pytest.raises(tt.ArtefactError, match="a different model"):
        tt.Classifier.load(tmp_path / "task", backbone=str(tmp_path / "other"))


def test_saves_are_atomic_and_overwrite_replaces_everything(tiny_bert, toy, tmp_path):
    texts, labels = toy
    labels = [np.int64({"good": 0, "bad": 1, "money": 2}[y]) for y in labels]  # numpy labels become strings
    clf = tt.TailtuneClassifier("linear-probe", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False))
    clf.fit(texts, labels)
    assert clf.labels_ == ["0", "1", "2"]
    clf.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()}
    with pytest.raises(tt.ArtefactError, match="exists and is not empty"):
        clf.save(tmp_path / "m")
    from tailtune.artefacts import staged_dir
    with pytest.raises(KeyboardInterrupt):  # killed half-way through a save: the old one is untouched
        with staged_dir(tmp_path / "m", overwrite=True) as tmp:
            (tmp / "tailtune.json").write_text("half")
            raise KeyboardInterrupt
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no temporary left behind
    (tmp_path / "m" / "stale.txt").write_text("old")
    clf.save(tmp_path / "m", overwrite=True)
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert tt.TailtuneClassifier.load(tmp_path / "m", device="cpu").predict(texts[:3]) == clf.predict(texts[:3])


# ---------------------------------------------------------------- experiment files

def _experiment(tmp_path, tiny_bert, **changes):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "train.tsv").write_text("text\tlabel\n" + ROWS + "\n")
    cfg = {"backbone": tiny_bert, "data_dir": str(d), "output_dir": str(tmp_path / "out"),
           "train": {"epochs": 1, "batch_size": 8, "progress": False}, "weight_norms": False,
           "datasets": {"toy": {"train": "train.tsv", "test": "train.tsv"}},
           "runs": [{"presets": ["cls"], "seeds": [1]}], **changes}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "exp.yaml"


@pytest.mark.parametrize("changes,message", [
    ({"runs": [{"presets": ["cls"], "seeds": 1}]}, "runs\\[0\\].seeds must be a list of integers"),
    ({"train": {"lrr": 1e-3}}, "unknown key\\(s\\) \\['lrr'\\] \\(did you mean 'lr'\\?\\)"),
    ({"datasets": {"toy": {"train": "train.tsv", "test": "train.tsv", "tempalte": "x"}}}, "unknown key\\(s\\) \\['tempalte'\\]"),
    ({"runs": [{"presets": ["cls"], "seeds": [1], "datasets": ["nope"]}]}, "unknown dataset\\(s\\) \\['nope'\\]"),
    ({"presets": {"v": {"preset": "prompt", "eta": 1.0}}, "runs": [{"presets": ["v"], "seeds": [1]}]},
     "toy / v / seed 1: option 'eta' belongs to calibration='eta-norm'"),
    ({"runs": [{"presets": ["nope"], "seeds": [1]}]}, "unknown preset 'nope'"),
    ({"datasets": {"toy": {"train": "train-{seed}.tsv", "test": "train.tsv"}}}, "data file not found: .*train-1.tsv"),
])
def test_experiment_plan_is_checked_before_any_run(tiny_bert, tmp_path, capsys, changes, message):
    rc, _, err = cli(capsys, "run", _experiment(tmp_path, tiny_bert, **changes))
    assert rc == 2 and __import__("re").search(message, err), err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_malformed_yaml_names_the_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("datasets:\n  toy: {train: a.tsv\nruns: []\n")
    rc, _, err = cli(capsys, "run", tmp_path / "bad.yaml")
    assert rc == 2 and "bad.yaml, line" in err and "not valid YAML" in err


def test_results_file_with_a_half_line_and_changed_settings(tiny_bert, tmp_path, capsys):
    path = _experiment(tmp_path, tiny_bert)
    assert cli(capsys, "run", path)[0] == 0
    results = tmp_path / "out" / "results.jsonl"
    with results.open("a") as f:
        f.write('{"dataset": "toy", "preset": "cls", "se')  # a run killed while writing its line
    cfg = yaml.safe_load(path.read_text())
    cfg["train"]["lr"] = 2e-4  # another setting: the run is not the finished one
    path.write_text(yaml.safe_dump(cfg))
    rc, out, _ = cli(capsys, "run", path)
    assert rc == 0 and "running" in out
    lines = results.read_text().splitlines()
    assert json.loads(lines[-1])["train_config"]["lr"] == 2e-4  # on a line of its own
    assert len(lines) == 3


# ---------------------------------------------------------------- API

def test_api_misuse():
    with pytest.raises(tt.DataError, match="fit needs labels"):
        tt.TailtuneClassifier().fit(["a", "b"])
    with pytest.raises(tt.DataError, match="not a single string"):
        tt.TailtuneClassifier().fit("a text", ["x"])
    with pytest.raises(tt.DataError, match="X_b must be a list of texts, not a single string"):
        tt.TailtuneClassifier().fit(["a", "b"], ["x", "y"], "a second text")  # was read as its characters
    with pytest.raises(tt.ConfigError, match="not trained yet"):
        tt.TailtuneClassifier().predict(["x"])
    with pytest.raises(tt.ConfigError, match="batch_size=0"):
        tt.TrainConfig(batch_size=0)
    with pytest.raises(tt.ConfigError, match="grad_accum=1.5: must be a whole number"):
        tt.TrainConfig(grad_accum=1.5)
    with pytest.raises(tt.ConfigError, match="either a ClassifierConfig"):
        tt.TailtuneClassifier(config=tt.ClassifierConfig(), lora_r=2)


def test_task_name_and_unknown_tasks(tiny_bert):
    with pytest.raises(tt.ConfigError, match="letters, digits"):
        tt.build_classifier(tt.config_from_preset("cls"), ["a", "b"], tiny_bert).__class__(
            tt.config_from_preset("cls"), ["a", "b"], __import__("tailtune.backbone").backbone.load_backbone(tiny_bert),
            task="bad name")
    from tailtune.multitask import TaskSet
    with pytest.raises(tt.ConfigError, match="unknown task"):
        TaskSet().predict(["x"], "nope")


def test_json_output_never_holds_nan(model_dir, files, capsys, monkeypatch):
    import tailtune.api as api
    monkeypatch.setattr(api.TailtuneClassifier, "predict_proba", lambda self, X, X_b=None: np.full((len(X), 3), np.nan))
    rc, out, err = cli(capsys, "predict", model_dir, "the film")
    assert rc == 0 and json.loads(out) == {"id": 0, "text": "the film", "label": None, "score": None}
    assert "NaN" not in out and "non-finite" in err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(model_dir, capsys, monkeypatch):
    import tailtune.api as api
    monkeypatch.setattr(api.TailtuneClassifier, "predict_proba", lambda *a, **k: 1 / 0)
    rc, _, err = cli(capsys, "predict", model_dir, "x")
    assert rc == 1 and err.count("\n") == 1 and "ZeroDivisionError" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["predict", str(model_dir), "x", "--debug"])
    assert os.environ.get("TAILTUNE_NEVER_SET") is None


@pytest.mark.parametrize("argv, said", [
    (["train", "--train", "t.tsv", "-o", "m", "--epoch", "3"], "--epoch: did you mean --epochs?"),
    # argparse read a prefix as the option it starts: this was `--test-prior t.tsv`, "invalid choice"
    (["evaluate", "m", "--data", "d.tsv", "--test", "t.tsv"], "--test: did you mean --test-prior?"),
    (["predict", "m", "a text", "--tsk", "x"], "--tsk: did you mean --task?"),
    (["train", "--train", "t.tsv", "-o", "m", "--no-such-option", "1"], "'tailtune train --help' lists every option"),
])
def test_options_are_written_in_full_and_a_near_miss_is_named(capsys, argv, said):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unrecognized arguments: {argv[-2]} {argv[-1]}" in err and said in err
    if argv[-2] == "--no-such-option":
        assert "did you mean" not in err


def test_an_output_file_is_checked_before_any_work_and_written_whole(model_dir, files, capsys):
    (files / "afile").write_text("x")
    for command in (["evaluate", model_dir, "--data", files / "test.tsv"], ["predict", model_dir, "a text"],
                    ["tune", "--train", files / "train.tsv", "--dev", files / "test.tsv"],
                    ["zero-shot", "--data", files / "test.tsv"], ["report", files]):
        for path, said in [(files, "is a folder; give the path of a file to write"),
                           (files / "afile" / "out.json", "afile is a file, not a folder")]:
            with pytest.raises(SystemExit) as e:  # refused by the parser: nothing loaded, trained or searched
                main([str(a) for a in [*command, "--output", path]])
            assert e.value.code == 2 and said in capsys.readouterr().err
    rc, _, _ = cli(capsys, "predict", model_dir, "a text", "--output", files / "new" / "deeper" / "p.jsonl")
    assert rc == 0 and json.loads((files / "new" / "deeper" / "p.jsonl").read_text())["id"] == 0  # folders made
    from tailtune.artefacts import atomic_open
    with pytest.raises(RuntimeError), atomic_open(files / "afile") as f:  # a write that fails half-way
        f.write("half")
        raise RuntimeError
    assert (files / "afile").read_text() == "x" and [p.name for p in files.iterdir() if ".tmp-" in p.name] == []


def test_evaluate_takes_texts_and_labels_as_fit_does(model_dir):
    clf = tt.TailtuneClassifier.load(model_dir)
    texts, labels = TOY_TEXTS * 3, TOY_LABELS * 3
    report = clf.evaluate(texts, labels)  # was an AttributeError: evaluate read only a TextDataset
    assert json.dumps(report) == json.dumps(clf.evaluate(tt.TextDataset(texts, labels)))  # NaN bands compare too
    assert clf.evaluate(texts, labels, theta=0.3, groups="split")["theta"] == 0.3
    for args, kind, message in [((texts,), tt.DataError, "evaluate needs labels: evaluate\\(texts, labels\\)"),
                                ((texts, "good"), tt.DataError, "y must be a list of labels, one per text"),
                                ((tt.TextDataset(texts, labels), 0.5), tt.ConfigError, "theta is a keyword argument"),
                                ((tt.TextDataset(texts, labels), labels), tt.DataError, "not a TextDataset and y")]:
        with pytest.raises(kind, match=message):
            clf.evaluate(*args)
