"""Hub-ready artefacts: a model card in every save, push_to_hub's upload plan, loading by repo id,
and datasets named on the Hub. No network here: the Hub calls are replaced where they would fetch."""
import json

import pytest

import tailtune as tt
from conftest import TOY_LABELS, TOY_TEXTS
from tailtune.cli import main


@pytest.fixture(scope="module")
def saved(tiny_bert, tmp_path_factory):
    clf = tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(epochs=1, batch_size=8, progress=False))
    test = tt.TextDataset(TOY_TEXTS, TOY_LABELS)
    clf.fit(TOY_TEXTS * 3, TOY_LABELS * 3, dev=test)
    out = tmp_path_factory.mktemp("hub") / "clf"
    clf.save(out, report=clf.evaluate(test))
    return out, clf


def test_every_save_carries_a_model_card(saved):
    out, clf = saved
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: tailtune\npipeline_tag: text-classification\n")
    assert "Preset `cls`" in card and "| head | `mlp` |" in card
    assert "| macro-F1 |" in card and "| tail-F1 |" in card and "Best dev macro-F1" in card
    assert all(f"`{y}`" in card for y in clf.labels_)
    assert "## Intended use and limits" in card
    assert tt.TailtuneClassifier.load(out).predict(["the film"]) == clf.predict(["the film"])


def test_push_plans_the_safe_files_and_refuses_a_bad_repo_id(saved, capsys):
    out, _ = saved
    assert main(["push", str(out), "someone/toy-classifier", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("would upload") and "README.md" in said and "model.safetensors" in said
    assert "tailtune.json" in said and "backbone/config.json" in said
    assert not any(ext in said for ext in (".bin", ".pt,", ".pkl", ".ckpt"))  # safetensors + JSON only
    assert main(["push", str(out), "not a repo", "--dry-run"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err


def test_a_hub_repo_id_loads_and_a_failed_fetch_says_why(saved, monkeypatch, capsys):
    import huggingface_hub
    out, clf = saved
    asked = []

    def fake_download(repo_id, **kw):
        asked.append((repo_id, kw["allow_patterns"]))
        return str(out)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loaded = tt.TailtuneClassifier.load("someone/toy-classifier")
    assert asked[0][0] == "someone/toy-classifier" and "*.bin" not in asked[0][1]
    assert loaded.predict(["the film"]) == clf.predict(["the film"])
    assert main(["predict", "someone/toy-classifier", "the film"]) == 0  # the command line takes a repo id too
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] == clf.predict(["the film"])[0]

    rows = "".join(f"{t}\t{y}\n" for t, y in zip(TOY_TEXTS, TOY_LABELS))
    (out.parent / "reviews.tsv").write_text("review\ttopic\n" + rows)
    reviews = tt.read_dataset(out.parent / "reviews.tsv", "review", "topic")
    tt.TailtuneClassifier("cls", clf.backbone, train_config=clf.train_config).fit(reviews, dev=reviews).save(
        out.parent / "reviews", overwrite=True)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(out.parent / "reviews"))
    capsys.readouterr()  # a Hub classifier's saved columns read the data, as a local one's do
    assert main(["evaluate", "someone/reviews", "--data", str(out.parent / "reviews.tsv")]) == 0
    assert "macro-F1" in capsys.readouterr().out

    def offline(repo_id, **kw):
        raise OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(tt.ArtefactError, match="no such local directory, and the Hub repo could not be fetched"):
        tt.TailtuneClassifier.load("someone/missing")


def test_a_hub_dataset_by_name(monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    fake = datasets.Dataset.from_dict({"text": ["bad", "good"], "label": [0, 1]}, features=features)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: calls.append((name, config, split)) or fake)
    ds = tt.read_dataset("hf:someone/reviews:plain:train")
    assert calls == [("someone/reviews", "plain", "train")] and ds.labels == ["neg", "pos"] and ds.texts == ["bad", "good"]
    assert tt.read_dataset("hf:reviews:test").labels == ["neg", "pos"] and calls[-1] == ("reviews", None, "test")
    with pytest.raises(tt.DataError, match="write hf:NAME:SPLIT"):
        tt.read_dataset("hf:reviews")
