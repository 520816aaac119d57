import json

import pytest

import tailtune as tt
from tailtune.data import DataError, check_labels, label_space


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_tsv_with_quoted_fields(tmp_path):
    p = write(tmp_path / "d.tsv", 'text\tlabel\n"he said ""hi""\tthere"\tgreet\nplain text\tother\n')
    ds = tt.read_dataset(p)
    assert ds.texts == ['he said "hi"\tthere', "plain text"]
    assert ds.labels == ["greet", "other"]


def test_csv_jsonl_and_custom_columns(tmp_path):
    ds = tt.read_dataset(write(tmp_path / "d.csv", 'sentence,y,ent\n"a, b",x,Paris\nc,z,Rome\n'),
                         text_col="sentence", label_col="y", text_b_col="ent")
    assert ds.texts == ["a, b", "c"] and ds.texts_b == ["Paris", "Rome"] and ds.labels == ["x", "z"]
    rows = [{"text": "t1", "label": 1}, {"text": "t2", "label": "b"}]
    ds = tt.read_dataset(write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n"))
    assert ds.labels == ["1", "b"]  # labels are strings


def test_headerless_csv(tmp_path):
    ds = tt.read_dataset(write(tmp_path / "d.csv", '0,"good, film"\n1,bad\n'), header=False,
                         columns=["label", "text"])
    assert ds.texts == ["good, film", "bad"] and ds.labels == ["0", "1"]


@pytest.mark.parametrize("content,name,message", [
    ("text\tlabel\nfine\ta\n\tb\n", "d.tsv", "line 3: empty text"),
    ("text\tlabel\nfine\ta\nonly one field\n", "d.tsv", "line 3: expected 2 fields"),
    ("txt\tlabel\nfine\ta\n", "d.tsv", "no text column 'text'"),
    ("Text\tLabel\nfine\ta\n", "d.tsv", "Name the text column with --text-col Text$"),  # the same name but its case
    ("text\tstars\nfine\t5\n", "d.tsv", r"no label column 'label'; columns are \['stars', 'text'\]\. Name the label "
                                      "column with --label-col"),
    ('{"text": "a", "label": "x"}\n{oops\n', "d.jsonl", "line 2: not valid JSON"),
    ("text\tlabel\nfine\t\n", "d.tsv", "line 2: empty label"),
    ("a", "d.txt", "a .txt file holds one text per line and nothing else, but this needs a label"),
    ("a", "d.xml", "unsupported file type '.xml'"),
])
def test_bad_input_is_explained(tmp_path, content, name, message):
    with pytest.raises(DataError, match=message):
        tt.read_dataset(write(tmp_path / name, content))


def test_a_dataset_knows_the_columns_it_was_read_from(tmp_path):
    ds = tt.read_dataset(write(tmp_path / "d.tsv", "review\tentity\tstars\nfine\tx\t5\nbad\ty\t1\n"), "review",
                         "stars", "entity")
    names = {"text_col": "review", "text_b_col": "entity", "label_col": "stars"}
    assert ds.column_names == names and ds.subset([1]).column_names == names  # a fitted classifier saves them
    assert tt.TextDataset(["a"], ["x"]).column_names is None


def test_plain_text_file_is_one_text_per_line(tmp_path):
    path = write(tmp_path / "t.txt", "first text\n\nsecond, with a comma\tand a tab\n")
    ds = tt.read_dataset(path, label_col=None)
    assert ds.texts == ["first text", "second, with a comma\tand a tab"] and ds.labels == ["", ""]
    kept = tt.read_dataset(path, label_col=None, keep_blank_rows=True, allow_empty=True)
    assert kept.texts == ["first text", "", "second, with a comma\tand a tab"]  # predictions line up with lines
    from tailtune.data import columns
    assert columns(path) == []
    with pytest.raises(DataError, match="needs a second text"):
        tt.read_dataset(path, label_col=None, text_b_col="text_b")


def test_missing_file():
    with pytest.raises(DataError, match="not found"):
        tt.read_dataset("/no/such/file.tsv")


def test_unknown_dev_label():
    with pytest.raises(DataError, match="never seen in training: 'z'"):
        check_labels(tt.TextDataset(["a"], ["z"], source="dev.tsv"), ["x", "y"], "dev")


def test_head_tail_rule():
    # shares 0.5, 0.3, 0.1, 0.1: running 0.5 < 0.65 head; 0.8 -> tail from there on
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["d"] * 10
    assert tt.head_tail_split(labels, 0.65) == (["a"], ["b", "c", "d"])
    assert tt.head_tail_split(labels, 0.85) == (["a", "b"], ["c", "d"])
    # a single dominant class above theta is tail: the running share including it is not below θ
    assert tt.head_tail_split(["a"] * 9 + ["b"], 0.55) == ([], ["a", "b"])
    stats = tt.class_stats(labels, 0.65)
    assert stats["imbalance_ratio"] == 5 and list(stats["counts"]) == ["a", "b", "c", "d"]


def test_stratified_split_is_seeded_and_stratified():
    ds = tt.TextDataset([f"t{i}" for i in range(100)], ["a"] * 80 + ["b"] * 19 + ["c"])
    tr1, dv1 = tt.stratified_split(ds, 0.1, seed=3)
    tr2, dv2 = tt.stratified_split(ds, 0.1, seed=3)
    assert dv1.texts == dv2.texts and tr1.texts == tr2.texts
    assert sorted(dv1.labels) == ["a"] * 8 + ["b"] * 2  # the singleton class stays in train
    assert "c" in tr1.labels and len(tr1) + len(dv1) == 100
    assert set(tr1.texts).isdisjoint(dv1.texts)
    assert tt.stratified_split(ds, 0.1, seed=4)[1].texts != dv1.texts


def test_k_shot():
    ds = tt.TextDataset([f"t{i}" for i in range(60)], ["a"] * 40 + ["b"] * 20)
    tr, dv = tt.k_shot(ds, 8, seed=1)
    assert sorted(tr.labels) == ["a"] * 8 + ["b"] * 8 and sorted(dv.labels) == ["a"] * 8 + ["b"] * 8
    assert set(tr.texts).isdisjoint(dv.texts)
    assert tt.k_shot(ds, 8, seed=1)[0].texts == tr.texts
    with pytest.raises(DataError, match="class 'b' has 20 examples; 22 are needed"):
        tt.k_shot(ds, 11)


def test_label_space_is_stable():
    assert label_space(["b", "a", "b", "c"]) == ["a", "b", "c"]


def test_from_hf_maps_class_labels():
    datasets = pytest.importorskip("datasets")
    d = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]},
                                   features=datasets.Features({"text": datasets.Value("string"),
                                                               "label": datasets.ClassLabel(names=["neg", "pos"])}))
    assert tt.from_hf(d).labels == ["neg", "pos"]


def test_default_backbone_can_point_elsewhere(monkeypatch, tmp_path):
    from tailtune.backbone import resolve_name
    monkeypatch.setenv("TAILTUNE_DEFAULT_BACKBONE", str(tmp_path))
    assert resolve_name("default") == resolve_name(None) == str(tmp_path)
    assert resolve_name("bert-base-uncased") == "bert-base-uncased"


def test_demo_data_reads_without_warnings_and_keeps_its_long_tail(tmp_path):
    """The quickstart's own data: no repeated text in either split (train would warn about it), no test text seen
    in training, and training counts that fall from 60 to 3 as the README says."""
    import warnings
    from collections import Counter
    from tailtune.data import check_trainable, read_dataset
    from tailtune.demo import INTENTS, write_demo_data
    paths = write_demo_data(tmp_path)
    train, test = read_dataset(paths["train"]), read_dataset(paths["test"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_trainable(train)
    assert len(set(train.texts)) == len(train) and len(set(test.texts)) == len(test)
    assert not set(train.texts) & set(test.texts)
    assert Counter(train.labels) == {y: n for y, (n, _) in INTENTS.items()}
    assert max(Counter(train.labels).values()) == 60 and min(Counter(train.labels).values()) == 3
