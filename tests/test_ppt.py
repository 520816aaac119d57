"""PPT: sentence splitting, self-supervised task builders, pre-trained prompts, unified format."""
from collections import Counter

import pytest
import torch

import tailtune as tt
from tailtune.artefacts import load_prompt
from tailtune.stages.ppt import (SENTIMENT, multiple_choice, pretrain_prompt, pseudo_sentiment, read_documents,
                                 sentence_pair, single_sentence, split_sentences, unified_template)

DOCS_TEXT = "\n".join(  # every sentence names its document, so tests can find where it came from
    f"The market price of oil rose in week {i}. Shares of bank {i} fell sharply after the report. "
    f"Mr. Smith said profits of firm {i} were good and growth was strong. Film {i} was a terrible loss for the team. "
    f"Who is person {i} in the city? Movie {i} was a great movie with a happy ending. Trade {i} was fine and stable today."
    for i in range(12))


def test_split_sentences_keeps_abbreviations():
    s = split_sentences("Mr. Smith met U.S. officials on Jan. 5 in Washington. Prices rose 5 pct. Why did they rise?")
    assert s == ["Mr. Smith met U.S. officials on Jan. 5 in Washington.", "Prices rose 5 pct.", "Why did they rise?"]


def test_builders_have_the_documented_label_distributions(tmp_path):
    (tmp_path / "t.txt").write_text(DOCS_TEXT)
    docs = read_documents([str(tmp_path / "t.txt")])
    assert len(docs) == 12 and all(len(d) == 7 for d in docs)
    pairs = sentence_pair(docs, 300, seed=1)
    assert Counter(pairs.labels) == {"yes": 100, "maybe": 100, "no": 100}
    for a, b, y in zip(pairs.texts, pairs.texts_b, pairs.labels):
        doc = next(d for d in docs if a in d)
        i = doc.index(a)
        if y == "yes":
            assert doc[i + 1] == b
        elif y == "maybe":
            assert b in doc and abs(doc.index(b) - i) > 1
        else:
            assert b != doc[i + 1]
    mc = multiple_choice(docs, 200, options=4, seed=1)
    assert Counter(mc.labels) == {"a": 50, "b": 50, "c": 50, "d": 50}
    assert all(opt.count("( ") == 4 for opt in mc.texts_b)
    single = single_sentence(docs, 50, seed=1)
    counts = Counter(single.labels)
    assert set(counts) <= set(SENTIMENT) and len(set(counts.values())) == 1
    assert pseudo_sentiment("profits were good and growth was strong") in ("good", "great")
    assert pseudo_sentiment("a terrible loss and a bad crisis") in ("bad", "terrible")
    assert sentence_pair(docs, 30, seed=1).texts == sentence_pair(docs, 30, seed=1).texts  # seeded


def test_pretrained_prompt_round_trip(tiny_bert, tmp_path):
    (tmp_path / "t.txt").write_text(DOCS_TEXT)
    cfg = tt.TrainConfig(epochs=1, batch_size=8, lr=1e-3, module_lr=1e-2, progress=False, seed=1)
    pretrain_prompt("sentence_pair", [str(tmp_path / "t.txt")], tmp_path / "prompt", tiny_bert, examples=48,
                    dev_examples=12, soft_tokens=3, max_length=64, train_config=cfg, log=lambda *_: None)
    saved, meta = load_prompt(tmp_path / "prompt", tt.build_classifier(
        tt.config_from_preset("cls"), ["a", "b"], tiny_bert).encoder, 3)
    assert meta["task"] == "sentence_pair" and saved["soft_prompt"].shape == (3, 32)
    hybrid = tt.build_classifier(tt.config_from_preset("soft-prompt", soft_tokens=3, prompt_init=str(tmp_path / "prompt"),
                                                       template="{text} It was {mask} ."), ["good", "bad"], tiny_bert)
    torch.testing.assert_close(hybrid.tuning.soft_prompt.detach(), saved["soft_prompt"])
    torch.testing.assert_close(hybrid.head.dense.weight.detach(), saved["head.dense.weight"])
    with pytest.raises(ValueError, match="set soft_tokens=3"):
        tt.build_classifier(tt.config_from_preset("soft-prompt", soft_tokens=4, prompt_init=str(tmp_path / "prompt")),
                            ["good", "bad"], tiny_bert)
    from tiny import make_bert
    with pytest.raises(ValueError, match="pre-trained on backbone"):
        tt.build_classifier(tt.config_from_preset("soft-prompt", soft_tokens=3, prompt_init=str(tmp_path / "prompt")),
                            ["good", "bad"], make_bert(tmp_path / "other", seed=2))
    # a classifier started from the prompt saves and loads like any other
    texts, labels = ["great film", "bad food"] * 6, ["good", "bad"] * 6
    clf = tt.TailtuneClassifier("soft-prompt", tiny_bert, soft_tokens=3, prompt_init=str(tmp_path / "prompt"),
                                train_config=cfg).fit(texts, labels, dev=tt.TextDataset(texts, labels))
    clf.save(tmp_path / "clf")
    (tmp_path / "prompt" / "prompt.json").unlink()  # loading needs only the saved classifier
    loaded = tt.TailtuneClassifier.load(tmp_path / "clf", device="cpu")
    assert loaded.predict(texts) == clf.predict(texts)
    assert loaded.model_.config.options["prompt_init"] == str(tmp_path / "prompt")


def test_unified_multiple_choice_format(tiny_bert):
    template, verbalizer = unified_template({"0": "terrible", "1": "great"}, ["0", "1"])
    assert template == "{text} ( a ) terrible ( b ) great . Answer : {mask} ."
    assert verbalizer == {"0": "a", "1": "b"}
    clf = tt.build_classifier(tt.config_from_preset("soft-prompt", soft_tokens=2, template=template), ["0", "1"],
                              tiny_bert, verbalizer)
    enc = clf.encode(["a good film"])[0]
    tokens = clf.tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert tokens[enc.position] == clf.tokenizer.mask_token
    assert enc.soft_positions == [1, 2] and "terrible" in tokens and "great" in tokens
    assert clf.head.token_ids.tolist() == sorted(clf.tokenizer.convert_tokens_to_ids(["a", "b"]))


def test_pretraining_dev_set_comes_from_held_out_documents(tmp_path):
    from tailtune.stages.ppt import split_documents
    (tmp_path / "t.txt").write_text(DOCS_TEXT)
    docs = read_documents([str(tmp_path / "t.txt")])
    train_docs, dev_docs = split_documents(docs, dev_share=0.25, seed=3)
    assert len(dev_docs) == 3 and len(train_docs) == 9
    assert split_documents(docs, dev_share=0.25, seed=3) == (train_docs, dev_docs)  # seeded
    train_sentences = {s for d in train_docs for s in d}
    assert not train_sentences & {s for d in dev_docs for s in d}
    # a template without the pair's second text is refused before any training
    with pytest.raises(ValueError, match="text_b"):
        pretrain_prompt("sentence_pair", [str(tmp_path / "t.txt")], tmp_path / "p", None, template="{text} {mask} .")


def test_experiment_prompt_styles():
    from tailtune.experiment import prompt_format
    ds = {"template": "{text} It was {mask} .", "verbalizer": {"0": "terrible", "1": "great"}}
    assert prompt_format(ds, "hybrid", ["0", "1"]) == (ds["template"], ds["verbalizer"])
    assert prompt_format(ds, "vanilla", ["0", "1"]) == ("{text} {mask} .", ds["verbalizer"])
    assert prompt_format({**ds, "vanilla_template": "{mask} {text}"}, "vanilla", ["0", "1"])[0] == "{mask} {text}"
    assert prompt_format(ds, "unified", ["0", "1"]) == unified_template(ds["verbalizer"], ["0", "1"])
    with pytest.raises(ValueError, match="template_style"):
        prompt_format(ds, "fancy", ["0", "1"])
