import json
import warnings

import pytest

from tailtune.cli import main
from conftest import TOY_LABELS, TOY_TEXTS


@pytest.fixture
def toy_files(tmp_path):
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS * 3, TOY_LABELS * 3))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows + "\n")
    (tmp_path / "test.tsv").write_text("text\tlabel\n" + rows + "\n")
    (tmp_path / "bad.tsv").write_text("sentence\tlabel\nx\ty\n")
    return tmp_path


def test_train_evaluate_predict(tiny_bert, toy_files, capsys):
    out = toy_files / "model"
    rc = main(["train", "--train", str(toy_files / "train.tsv"), "--test", str(toy_files / "test.tsv"),
               "--dev", str(toy_files / "test.tsv"), "--preset", "prompt", "--backbone", tiny_bert, "--output", str(out), "--epochs", "1",
               "--template", "{text} it is about {mask} .", "--no-progress", "--calibration", "eta-norm", "--eta", "1.0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "macro-F1" in text and "verbalizer 'good' -> 'good' -> ['good']" in text
    assert "dev: 36 texts of 3 of the 3 classes, given" in text
    meta = json.loads((out / "tailtune.json").read_text())
    assert meta["preset"] == "prompt" and meta["config"]["options"]["eta"] == 1.0 and meta["backbone"]["fingerprint"]
    assert (out / "analysis" / "weight_norms.csv").is_file() and (out / "test_report.json").is_file()
    assert main(["evaluate", str(out), "--data", str(toy_files / "test.tsv")]) == 0
    assert "tail-F1" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--data", str(toy_files / "test.tsv"), "--test-prior", "em",
                 "--output", str(toy_files / "em.json")]) == 0
    assert "test prior estimated from the texts (EM): " in capsys.readouterr().out
    shares = json.loads((toy_files / "em.json").read_text())["test_prior_estimate"]
    assert set(shares) == {"good", "bad", "money"} and sum(shares.values()) == pytest.approx(1.0)
    assert main(["predict", str(out), "the movie was great", "oil price", "--test-prior", "em"]) == 2
    assert "at least 20 texts for 3 classes (got 2)" in capsys.readouterr().err
    assert main(["predict", str(out), "the movie was great", "oil price"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == ["the movie was great", "oil price"]
    assert all(x["label"] in {"good", "bad", "money"} for x in lines)
    (toy_files / "texts.tsv").write_text("text\nthe film was bad\nstock price\n")
    assert main(["predict", str(out), "--data", str(toy_files / "texts.tsv"),
                 "--output", str(toy_files / "pred.jsonl")]) == 0
    assert len((toy_files / "pred.jsonl").read_text().splitlines()) == 2


def test_errors_speak_to_the_user(tiny_bert, toy_files, capsys):
    rc = main(["train", "--train", str(toy_files / "bad.tsv"), "--backbone", tiny_bert,
               "--output", str(toy_files / "m")])
    assert rc == 2
    said = "no text column 'text'; columns are ['label', 'sentence']. Name the text column with --text-col"
    assert said in capsys.readouterr().err
    rc = main(["train", "--train", str(toy_files / "train.tsv"), "--backbone", tiny_bert, "--preset", "prompt",
               "--template", "{text} no mask", "--output", str(toy_files / "m")])
    assert rc == 2 and "exactly one {mask}" in capsys.readouterr().err
    (toy_files / "m2").mkdir()
    (toy_files / "m2" / "keep.txt").write_text("precious")
    rc = main(["train", "--train", str(toy_files / "train.tsv"), "--backbone", tiny_bert,
               "--output", str(toy_files / "m2")])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    assert (toy_files / "m2" / "keep.txt").read_text() == "precious"  # nothing saved is lost
    assert main(["evaluate", str(toy_files), "--data", str(toy_files / "test.tsv")]) == 2
    assert "not a saved tailtune classifier" in capsys.readouterr().err
    rc = main(["train", "--train", str(toy_files / "train.tsv"), "--backbone", tiny_bert, "--test-prior", "em",
               "--output", str(toy_files / "m3")])
    assert rc == 2 and "give --test FILE" in capsys.readouterr().err and not (toy_files / "m3").exists()


def test_train_takes_label_descriptions_as_examples(tiny_bert, toy_files, capsys):
    (toy_files / "d.json").write_text(json.dumps({"money": "This is about prices .", "cheap": "x"}))
    base = ["train", "--train", str(toy_files / "train.tsv"), "--backbone", tiny_bert, "--epochs", "1",
            "--no-progress", "--stages", "none"]
    rc = main([*base, "--descriptions", str(toy_files / "d.json"), "--output", str(toy_files / "d1")])
    assert rc == 2 and "labels the training data does not have: ['cheap']" in capsys.readouterr().err
    assert not (toy_files / "d1").exists()  # refused before anything was trained or written
    (toy_files / "d.json").write_text(json.dumps({"money": "This is about prices ."}))
    assert main([*base, "--descriptions", str(toy_files / "d.json"), "--description-template", "It was {label} .",
                 "--description-copies", "2", "--output", str(toy_files / "d2")]) == 0
    assert "descriptions: 3 of 3 labels, each 2 times among the training examples" in capsys.readouterr().out
    meta = json.loads((toy_files / "d2" / "tailtune.json").read_text())
    assert meta["descriptions"]["texts"] == {"money": ["This is about prices ."], "good": ["It was good ."],
                                             "bad": ["It was bad ."]}


def test_stats(toy_files, capsys):
    assert main(["stats", "--data", str(toy_files / "train.tsv"), "--theta", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "36 examples, 3 classes, imbalance ratio 1.0" in out and "tail" in out


def test_evaluate_prints_the_early_exit_curve_against_full_depth(tiny_bert, toy_files, capsys):
    out = toy_files / "ee"
    assert main(["train", "--train", str(toy_files / "train.tsv"), "--preset", "fastbert", "--backbone", tiny_bert,
                 "--output", str(out), "--epochs", "1", "--no-progress"]) == 0
    capsys.readouterr()
    report = toy_files / "report.json"
    assert main(["evaluate", str(out), "--data", str(toy_files / "test.tsv"), "--exit-curve", "0,0.5",
                 "--exit-batch-sizes", "1,8", "--exit-repeats", "2", "--output", str(report)]) == 0
    text = capsys.readouterr().out
    assert "speed / quality of early exit (normalized-entropy)" in text and "speed-up" in text
    rows = [line.split() for line in text.splitlines() if line.strip().split(" ")[0] in ("full", "0", "0.5")]
    assert [r[0] for r in rows] == ["full", "0", "0.5"] and rows[0][2] == rows[1][2] == "100.0%"
    curves = json.loads(report.read_text())["exit_curve"]
    assert set(curves) == {"1", "8"} and [c["threshold"] for c in curves["8"]] == [None, 0.0, 0.5]
    assert all(len(c["all_seconds"]) == 2 and c["seconds"] == min(c["all_seconds"]) for c in curves["8"])
    with pytest.raises(SystemExit):  # refused by the parser, before the model loads
        main(["evaluate", str(out), "--data", str(toy_files / "test.tsv"), "--exit-curve", "0.5", "--exit-repeats", "0"])
    assert "--exit-repeats: '0': give a whole number of at least 1" in capsys.readouterr().err


def test_prediction_reads_more_of_each_text_with_max_length(tiny_bert, toy_files, capsys):
    import tailtune as tt
    from tailtune.errors import ConfigError
    clf = tt.TailtuneClassifier("cls", tiny_bert, max_length=8, train_config=tt.TrainConfig(epochs=1, progress=False))
    clf.fit(TOY_TEXTS * 3, TOY_LABELS * 3, dev=tt.TextDataset(TOY_TEXTS, TOY_LABELS))
    long = " ".join(TOY_TEXTS)  # longer than 8 tokens
    short_scores = clf.decision_function([long])
    assert len(clf.model_.encode([long])[0].input_ids) == 8
    clf.set_max_length(64)
    assert 8 < len(clf.model_.encode([long])[0].input_ids) <= 64
    assert not (clf.decision_function([long]) == short_scores).all()  # it read more of the text
    assert (clf.set_max_length(None).decision_function([long]) == short_scores).all()  # back to the trained length
    with pytest.raises(ConfigError, match="can read \\(128 positions\\)"):
        clf.set_max_length(1000)
    with pytest.raises(ConfigError, match="8 or more"):
        clf.set_max_length(4)
    out = toy_files / "model"
    clf.save(out)
    assert main(["evaluate", str(out), "--data", str(toy_files / "test.tsv"), "--max-length", "64"]) == 0
    assert "macro-F1" in capsys.readouterr().out
    assert main(["predict", str(out), long, "--max-length", "1000"]) == 2
    assert "--max-length 128 or less" in capsys.readouterr().err
    assert main(["predict", str(out), long, "--max-length", "64"]) == 0
    row = json.loads(capsys.readouterr().out)
    probs = tt.TailtuneClassifier.load(out, "cpu").set_max_length(64).predict_proba([long])[0]
    assert row["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_evaluate_and_predict_read_the_columns_the_classifier_was_trained_from(tiny_bert, toy_files, capsys):
    rows = "\n".join(f"{t} {i}\t{t.split()[-1]}\t{y}" for i, (t, y) in enumerate(zip(TOY_TEXTS * 3, TOY_LABELS * 3)))
    (toy_files / "pairs.tsv").write_text("review\tlast\ttopic\n" + rows + "\n")
    out = toy_files / "pairs"
    assert main(["train", "--train", str(toy_files / "pairs.tsv"), "--text-col", "review", "--text-b-col", "last",
                 "--label-col", "topic", "--backbone", tiny_bert, "--output", str(out), "--epochs", "1",
                 "--no-progress"]) == 0
    assert json.loads((out / "tailtune.json").read_text())["columns"] == {
        "text_col": "review", "text_b_col": "last", "label_col": "topic"}
    assert ("dev: 3 texts of 3 of the 3 classes, carved from the training data (a share of 0.1 of each class of 3 "
            "texts or more), which keeps 33 to train") in capsys.readouterr().out
    assert main(["evaluate", str(out), "--data", str(toy_files / "pairs.tsv")]) == 0  # no column flags needed
    assert "macro-F1" in capsys.readouterr().out
    data = ["--data", str(toy_files / "pairs.tsv")]
    assert main(["predict", str(out), *data]) == 0
    implied = capsys.readouterr().out
    assert main(["predict", str(out), *data, "--text-col", "review", "--text-b-col", "last"]) == 0
    assert implied == capsys.readouterr().out  # the second text is read, not silently left out
    said = "trained on pairs of texts, but these texts come without a second text"
    assert main(["predict", str(out), *data, "--text-b-col", "none"]) == 0
    alone = capsys.readouterr()
    assert [json.loads(x)["score"] for x in alone.out.splitlines()] != [
        json.loads(x)["score"] for x in implied.splitlines()] and said in alone.err
    assert main(["predict", str(out), "oil price"]) == 0  # texts on the command line have no second text
    assert said in capsys.readouterr().err
    import tailtune as tt
    clf = tt.TailtuneClassifier.load(out)
    with pytest.warns(UserWarning, match=said):  # the classifier knows, whoever calls it
        clf.predict(["oil price"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict(["oil price"], ["price"])
