"""Zero-shot classification: contextual calibration centres a content-free input; the embedding method
picks the nearest label description; the command reports the long-tail metrics."""
import json

import pytest
import torch

import tailtune as tt
import tailtune.zeroshot as zs
from tailtune.cli import main
from conftest import TOY_LABELS, TOY_TEXTS


@pytest.mark.parametrize("method", ["prompt", "embedding"])
def test_calibration_with_a_content_free_input_centres_its_scores(tiny_bert, monkeypatch, method):
    monkeypatch.setattr(zs, "CONTENT_FREE", ("N/A",))
    labels = sorted(set(TOY_LABELS))
    raw = zs.ZeroShotClassifier(labels, tiny_bert, method, calibrate=False)
    calibrated = zs.ZeroShotClassifier(labels, tiny_bert, method, calibrate=True)
    assert raw.method_ == calibrated.method_ == method and calibrated.content_free_log_probs is not None
    # by default only the prompt method is calibrated (the embedding method measured worse with it)
    default = zs.ZeroShotClassifier(labels, tiny_bert, method)
    assert (default.content_free_log_probs is not None) == (method == "prompt")
    before, after = raw.predict_proba(["N/A"])[0], calibrated.predict_proba(["N/A"])[0]
    assert before.max() - before.min() > 1e-3  # the template alone favours some label ...
    assert torch.allclose(after, torch.full_like(after, 1 / len(labels)), atol=1e-5)  # ... calibrated: none
    # the calibration is a per-label shift of the log-probabilities: the same for every text
    shift = calibrated.decision_function(TOY_TEXTS) - raw.decision_function(TOY_TEXTS).log_softmax(-1)
    assert torch.allclose(shift, shift[:1].expand_as(shift), atol=1e-5)


def test_the_embedding_method_picks_the_nearest_description(tiny_bert):
    labels = ["bad", "good", "money"]
    descriptions = {"bad": TOY_TEXTS[TOY_LABELS.index("bad")], "good": TOY_TEXTS[TOY_LABELS.index("good")],
                    "money": TOY_TEXTS[TOY_LABELS.index("money")]}
    clf = zs.ZeroShotClassifier(labels, tiny_bert, "embedding", descriptions=descriptions)
    assert clf.method_ == "embedding"
    assert clf.predict([descriptions[y] for y in labels]) == labels  # each description is nearest to itself
    # several descriptions of a label: it starts from their mean (one copy of each)
    two = zs.ZeroShotClassifier(labels, tiny_bert, "embedding", descriptions={**descriptions, "money": [
        descriptions["money"], "stock earn news"]})
    mean = torch.nn.functional.normalize(two.model.class_prototypes(two.model.encode([descriptions["money"],
                                         "stock earn news"]), torch.tensor([2, 2]))[2], dim=-1)
    weights = two.model.head.class_weights()[0]
    assert torch.allclose(torch.nn.functional.normalize(weights[2], dim=-1), mean, atol=1e-5)
    assert not torch.allclose(weights[2], clf.model.head.class_weights()[0][2])  # not money's single description
    with pytest.raises(tt.ConfigError, match="a text or a list"):
        zs.ZeroShotClassifier(labels, tiny_bert, "embedding", descriptions={"money": 3})
    with pytest.raises(tt.ConfigError, match="for method='prompt'"):
        zs.ZeroShotClassifier(labels, tiny_bert, "embedding", template="{text} it is {mask} .")
    with pytest.raises(tt.ConfigError, match="not among the labels"):
        zs.ZeroShotClassifier(labels, tiny_bert, "embedding", descriptions={"cheap": "x"})
    # one text is refused, not read as a list of its characters
    with pytest.raises(tt.DataError, match="not a single string"):
        clf.predict(descriptions["money"])
    with pytest.raises(tt.DataError, match="must hold texts"):
        clf.predict_proba([descriptions["money"], 3])


def test_the_zero_shot_command_reports_like_evaluate(tiny_bert, tmp_path, capsys):
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS, TOY_LABELS))
    (tmp_path / "test.tsv").write_text("text\tlabel\n" + rows + "\n")
    args = ["zero-shot", "--data", str(tmp_path / "test.tsv"), "--backbone", tiny_bert, "--output",
            str(tmp_path / "r.json")]
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"] == "prompt" and report["calibrated"] and 0 <= report["macro_f1"] <= 1
    assert {"head_f1", "tail_f1", "per_class"} <= set(report)
    assert "zero-shot, method prompt, calibrated" in capsys.readouterr().out
    assert main([*args[:-2], "--method", "embedding", "--template", "{text} {mask}"]) == 2
    assert main([*args[:-2], "--method", "embedding"]) == 0
    assert "zero-shot, method embedding\n" in capsys.readouterr().out
    assert main([*args[:-2], "--method", "embedding", "--calibrate"]) == 0
    assert "zero-shot, method embedding, calibrated" in capsys.readouterr().out
    assert main([*args[:-2], "--no-calibrate"]) == 0
    assert "zero-shot, method prompt\n" in capsys.readouterr().out


def test_label_word_search_gives_a_verbalizer_that_trains_saves_and_loads(tiny_bert, tmp_path, capsys):
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS * 2, TOY_LABELS * 2))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows + "\n")
    (tmp_path / "dev.tsv").write_text("text\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS, TOY_LABELS)) + "\n")
    out = tmp_path / "words.json"
    assert main(["label-words", "--train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "dev.tsv"),
                 "--backbone", tiny_bert, "--top-k", "5", "--output", str(out)]) == 0
    words = json.loads(out.read_text())
    assert set(words) == set(TOY_LABELS) and len(set(words.values())) == len(words)  # one distinct word per class
    assert all(w.isalpha() for w in words.values())
    assert "zero-shot dev accuracy" in capsys.readouterr().out
    clf = tt.TailtuneClassifier("prompt", tiny_bert, verbalizer=words,
                                train_config=tt.TrainConfig(epochs=1, batch_size=8, progress=False))
    clf.fit(TOY_TEXTS * 2, TOY_LABELS * 2)
    clf.save(tmp_path / "m")
    loaded = tt.TailtuneClassifier.load(tmp_path / "m")
    assert {y: ws[0] for y, ws in loaded.model_.verbalizer.to_dict().items()} == words
    assert (loaded.decision_function(TOY_TEXTS) == clf.decision_function(TOY_TEXTS)).all()


def test_template_search_ranks_the_bank_and_mlm_fillings_on_dev(tiny_bert, tmp_path, capsys):
    from tailtune.templates import BANK, search_templates
    train, dev = tt.TextDataset(TOY_TEXTS * 2, TOY_LABELS * 2), tt.TextDataset(TOY_TEXTS, TOY_LABELS)
    words = {"good": "good", "bad": "bad", "money": "price"}
    found = search_templates(train, dev, tiny_bert, words, max_length=64)
    ranking = found["ranking"]
    assert {r["source"] for r in ranking} == {"bank", "mlm"} and len(ranking) > len(BANK) - 3
    assert [r["dev_accuracy"] for r in ranking] == sorted((r["dev_accuracy"] for r in ranking), reverse=True)
    assert found["template"] == ranking[0]["template"]
    mlm = [r["template"] for r in ranking if r["source"] == "mlm"]
    assert all(t.count("{mask}") == 1 and t.count("{text}") == 1 for t in mlm)
    # the best template is an ordinary template string; its zero-shot dev accuracy is what the ranking says
    from tailtune.training import predict_logits
    model = tt.build_classifier(tt.config_from_preset("prompt", template=found["template"], max_length=64),
                                sorted(set(TOY_LABELS)), tiny_bert, words)
    acc = (predict_logits(model, model.encode(TOY_TEXTS)).argmax(-1) ==
           torch.tensor([sorted(set(TOY_LABELS)).index(y) for y in TOY_LABELS])).float().mean()
    assert abs(float(acc) - found["dev_accuracy"]) < 1e-6
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in zip(train.texts, train.labels)))
    (tmp_path / "dev.tsv").write_text("text\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in zip(dev.texts, dev.labels)))
    (tmp_path / "w.json").write_text(json.dumps(words))
    assert main(["templates", "--train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "dev.tsv"),
                 "--backbone", tiny_bert, "--verbalizer", str(tmp_path / "w.json"), "--no-generate",
                 "--max-length", "64", "--output", str(tmp_path / "t.json")]) == 0
    assert "best:" in capsys.readouterr().out
    assert {r["source"] for r in json.loads((tmp_path / "t.json").read_text())["ranking"]} == {"bank"}


def test_label_word_assignment_starts_distinct_and_never_shares_a_word():
    from tailtune.labelwords import assign
    # a weak MLM ranks the same generic word (7) first for both classes; the accuracy of any assignment that
    # reuses a word is never asked for, and the distinct start is already an assignment the search can improve
    asked = []

    def accuracy(choice):
        asked.append(list(choice))
        return {(7, 3): 0.5, (7, 4): 0.6, (5, 4): 0.9}.get(tuple(choice), 0.0)
    choice, best = assign([[7, 5], [7, 3, 4]], accuracy)
    assert asked[0] == [7, 3] and all(len(set(c)) == len(c) for c in asked)
    assert (choice, best) == ([5, 4], 0.9)
    with pytest.raises(tt.ConfigError, match="raise top_k"):
        assign([[7], [7]], accuracy)


@pytest.mark.parametrize("rank", ["contrast", "likelihood"])
def test_label_word_search_ranks_candidates_either_way(tiny_bert, rank):
    from tailtune.labelwords import search_label_words
    train, dev = tt.TextDataset(TOY_TEXTS * 2, TOY_LABELS * 2), tt.TextDataset(TOY_TEXTS, TOY_LABELS)
    found = search_label_words(train, dev, tiny_bert, top_k=5, max_length=32, rank=rank)
    assert found["rank"] == rank and len(set(found["verbalizer"].values())) == len(found["verbalizer"])
    with pytest.raises(tt.ConfigError, match="unknown candidate ranking"):
        search_label_words(train, dev, tiny_bert, rank="pmi")
