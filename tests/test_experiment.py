import json

import pytest
import yaml

import tailtune as tt

from tailtune.errors import ConfigError
from tailtune.experiment import load_experiment, results_table, run_experiment
from conftest import TOY_LABELS, TOY_TEXTS


def _write_data(d):
    d.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS * 3, TOY_LABELS * 3))
    (d / "train.tsv").write_text("text\tlabel\n" + rows + "\n")
    (d / "test.tsv").write_text("text\tlabel\n" + rows + "\n")


def test_experiment_runs_resumes_and_tabulates(tiny_bert, tmp_path):
    _write_data(tmp_path / "data" / "toy")
    cfg = {
        "backbone": tiny_bert, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"),
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False},
        "datasets": {"toy": {"train": "toy/train.tsv", "test": "toy/test.tsv", "theta": 0.5,
                             "template": "{text} it is about {mask} .",
                             "verbalizer": {"good": "good", "bad": "bad", "money": "price"}}},
        "presets": {"prompt-eta": {"preset": "prompt", "calibration": "eta-norm", "eta": 1.0}},
        "runs": [{"presets": ["cls", "prompt-eta"], "seeds": [1, 2]}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_experiment(load_experiment(path), log=lambda *_: None)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["preset"], r["seed"]) for r in rows] == [("cls", 1), ("cls", 2), ("prompt-eta", 1), ("prompt-eta", 2)]
    assert rows[2]["config"]["options"]["eta"] == 1.0 and rows[2]["config"]["head"] == "verbalizer"
    assert (out / "runs" / "toy" / "cls" / "seed1" / "weight_norms.png").is_file()
    # resumable: a second run skips everything already in results.jsonl
    logs = []
    run_experiment(load_experiment(path), log=logs.append)
    assert sum("skipped" in m for m in logs) == 4
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    table = (out / "results.md").read_text()
    assert "| cls |" in table and "toy Acc" in table and "toy Tail-F1" in table and " ± " in table


def test_table_layout():
    rows = [{"dataset": "d", "preset": "cls", "seed": s, "accuracy": a, "macro_f1": 0.5, "head_f1": 0.9,
             "tail_f1": 0.1} for s, a in ((1, 0.8), (2, 0.9))]
    table = results_table(rows)
    assert "| cls | 85.0 ± 5.0 | 50.0 ± 0.0 | 2 |" in table
    assert "| cls | 90.0 ± 0.0 | 10.0 ± 0.0 | 2 |" in table


def test_per_seed_files_headerless_csv_and_preset_train_options(tiny_bert, tmp_path):
    for seed in (1, 2):  # like the LM-BFF splits: <task>/16-<seed>/{train,test}.csv, "label,text", no header
        d = tmp_path / "data" / f"16-{seed}"
        d.mkdir(parents=True)
        rows = "\n".join(f'{y},"{t}"' for t, y in zip(TOY_TEXTS * 2, TOY_LABELS * 2))
        (d / "train.csv").write_text(rows + "\n")
        (d / "test.csv").write_text(rows + "\n")
    cfg = {
        "backbone": tiny_bert, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"),
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False},
        "datasets": {"toy": {"train": "16-{seed}/train.csv", "test": "16-{seed}/test.csv",
                             "columns": ["label", "text"]}},
        "presets": {"lora": {"lora_r": 2, "train": {"module_lr": 5e-3}}},
        "runs": [{"presets": ["lora"], "seeds": [1, 2]}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = run_experiment(load_experiment(path), log=lambda *_: None)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [1, 2]
    assert rows[0]["config"]["options"]["lora_r"] == 2 and rows[0]["train_config"]["module_lr"] == 5e-3
    assert rows[0]["parameters"]["trainable_without_head"] == 2 * 2 * (32 * 2 + 2 * 32)


def test_preset_backbone_template_style_shards_and_empty_texts(tiny_bert, tmp_path):
    """Per-preset backbone and prompt style; shards split the plan and share one results file;
    a split holding an empty text is kept with allow_empty_text."""
    import pytest

    from tiny import make_bert
    other = make_bert(tmp_path / "other", seed=2)
    _write_data(tmp_path / "data" / "toy")
    with (tmp_path / "data" / "toy" / "train.tsv").open("a") as f:
        f.write(" \tgood\n")
    cfg = {
        "backbone": tiny_bert, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"),
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False}, "weight_norms": False,
        "datasets": {"toy": {"train": "toy/train.tsv", "test": "toy/test.tsv", "allow_empty_text": True,
                             "template": "{text} it is about {mask} .",
                             "verbalizer": {"good": "good", "bad": "bad", "money": "price"}}},
        "presets": {"unified": {"preset": "soft-prompt", "soft_tokens": 2, "template_style": "unified"},
                    "cls@other": {"preset": "cls", "backbone": other}},
        "runs": [{"presets": ["unified", "cls@other", "cls"], "seeds": [1]}],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for k in (0, 1):
        run_experiment(load_experiment(path), log=lambda *_: None, shard=(k, 2))
    rows = {r["preset"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == ["cls", "cls@other", "unified"]
    assert rows["cls@other"]["backbone"] == other and rows["cls"]["backbone"] == tiny_bert
    assert rows["unified"]["config"]["options"]["template"].endswith("( a ) bad ( b ) good ( c ) price . Answer : {mask} .")
    assert not (tmp_path / "out" / "runs" / "toy" / "cls" / "seed1" / "weight_norms.png").exists()
    cfg["datasets"]["toy"]["allow_empty_text"] = False
    path.write_text(yaml.safe_dump({**cfg, "output_dir": str(tmp_path / "out2")}))
    with pytest.raises(Exception, match="empty text.*allow_empty"):
        run_experiment(load_experiment(path), log=lambda *_: None)


def test_every_benchmark_yaml_resolves_on_the_shared_data():
    """The shipped experiment files still describe valid runs (options, templates, files), checked the way
    `tailtune run` checks them before training."""
    import os
    from pathlib import Path

    import pytest

    from tailtune.experiment import planned_runs, resolve
    data = Path(os.environ.get("TAILTUNE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if not (data / "longtail" / "trec50").is_dir():
        pytest.skip(f"no shared data at {data}")
    for path in sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.yaml")):
        cfg = load_experiment(path, str(data))
        for run in planned_runs(cfg):
            assert resolve(cfg, *run)[0].settings_hash


def test_a_ray_backed_run_gives_the_plain_runners_results(tiny_bert, tmp_path):
    import pytest
    pytest.importorskip("ray")
    _write_data(tmp_path / "data" / "toy")
    base = {"backbone": tiny_bert, "data_dir": str(tmp_path / "data"),
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False},
            "datasets": {"toy": {"train": "toy/train.tsv", "test": "toy/test.tsv", "theta": 0.5}},
            "runs": [{"presets": ["cls", "cls-focal"], "seeds": [1, 2]}], "ray": {"num_cpus": 1}}
    rows = {}
    for runner in ("plain", "ray"):
        cfg = {**base, "output_dir": str(tmp_path / runner)}
        (tmp_path / f"{runner}.yaml").write_text(yaml.safe_dump(cfg))
        logs = []
        out = run_experiment(load_experiment(tmp_path / f"{runner}.yaml"), log=logs.append,
                             ray="local" if runner == "ray" else None)
        found = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        assert len(found) == 4  # each run appended once
        rows[runner] = {(r["dataset"], r["preset"], r["seed"]): r for r in found}
        assert (out / "runs" / "toy" / "cls-focal" / "seed2" / "report.json").is_file()
    assert any(m.startswith("ray: 4 runs sent") for m in logs)
    assert rows["plain"].keys() == rows["ray"].keys()
    for key, a in rows["plain"].items():
        b = rows["ray"][key]
        assert a["settings_hash"] == b["settings_hash"]
        for metric in ("accuracy", "macro_f1", "best_step", "steps"):
            assert a[metric] == pytest.approx(b[metric], abs=1e-6), (key, metric)


def test_a_datasets_unlabeled_texts_reach_only_the_runs_that_learn_from_them(tiny_bert, tmp_path):
    from tailtune.experiment import resolve
    _write_data(tmp_path / "data" / "toy")
    unlabeled = [f"{a} {b}" for a, b in zip(TOY_TEXTS, reversed(TOY_TEXTS))]
    (tmp_path / "data" / "toy" / "more.txt").write_text("\n".join(unlabeled) + "\n")
    dataset = {"train": "toy/train.tsv", "test": "toy/test.tsv", "theta": 0.5, "template": "{text} it is {mask} .",
               "verbalizer": {"good": "good", "bad": "bad", "money": "price"}}
    cfg = {"backbone": tiny_bert, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"),
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False},
           "datasets": {"toy": {**dataset, "unlabeled": "toy/more.txt"}},
           "presets": {"pet-mlm": {"preset": "prompt", "mlm_weight": 0.5},
                       "prompt-no-mlm": {"preset": "prompt", "mlm_weight": 0.0}},
           "runs": [{"presets": ["cls", "pet-mlm", "prompt-no-mlm"], "seeds": [1]}]}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_experiment(path)
    plans = {p: resolve(loaded, "toy", p, 1) for p in ("cls", "pet-mlm", "prompt-no-mlm")}
    assert plans["pet-mlm"][1]["unlabeled"].texts == unlabeled and plans["pet-mlm"][0].mlm_weight == 0.5
    assert plans["cls"][1]["unlabeled"] is None and plans["prompt-no-mlm"][1]["unlabeled"] is None
    # the runs that do not read the file keep the identity they had without it (finished runs stay finished)
    without = {**cfg, "datasets": {"toy": dataset}, "_source": "x"}
    for p, same in (("cls", True), ("prompt-no-mlm", True), ("pet-mlm", False)):
        assert (resolve(without, "toy", p, 1)[0].settings_hash == plans[p][0].settings_hash) is same
    # what training would refuse is refused when the plan is checked, before any run trains
    bad = {**loaded, "presets": {**cfg["presets"], "pet-mlm": {"preset": "prompt", "mlm_weight": 2.0}}}
    with pytest.raises(ConfigError, match="pet-mlm / seed 1: the auxiliary MLM weight must be between 0 and 1"):
        resolve(bad, "toy", "pet-mlm", 1)
    said: list[str] = []
    out = run_experiment(loaded, log=said.append)
    rows = {r["preset"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    # what training prints reaches the experiment's log, under each run's "running" line
    start = said.index("[2/3] toy pet-mlm seed=1: running")
    assert said[start + 1].startswith("  trainable parameters: ")
    assert {p: r["unlabeled_texts"] for p, r in rows.items()} == {"cls": 0, "pet-mlm": len(unlabeled),
                                                                  "prompt-no-mlm": 0}


def test_a_datasets_label_descriptions_join_every_runs_training_examples(tiny_bert, tmp_path, monkeypatch):
    from tailtune.experiment import resolve
    _write_data(tmp_path / "data" / "toy")
    (tmp_path / "data" / "toy" / "labels.json").write_text(json.dumps({"good": ["It was great .", "fine"]}))
    dataset = {"train": "toy/train.tsv", "test": "toy/test.tsv", "theta": 0.5}
    cfg = {"backbone": tiny_bert, "data_dir": str(tmp_path / "data"), "output_dir": str(tmp_path / "out"),
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False},
           "datasets": {"toy": {**dataset, "descriptions": "toy/labels.json", "description_template": "about {label}",
                                "description_copies": 2}},
           "runs": [{"presets": ["cls"], "seeds": [1]}], "_source": "exp.yaml"}
    plan = resolve(cfg, "toy", "cls", 1)[0]
    assert plan.descriptions == {"good": ["It was great .", "fine"], "bad": "about bad", "money": "about money"}
    assert plan.description_copies == 2
    # the identity holds the texts: a run without them, or with other texts, is another run
    plain = resolve({**cfg, "datasets": {"toy": dataset}}, "toy", "cls", 1)[0]
    assert plain.descriptions is None and plain.settings_hash != plan.settings_hash
    inline = {**cfg, "datasets": {"toy": {**dataset, "descriptions": {"good": "It was great ."}}}}
    assert resolve(inline, "toy", "cls", 1)[0].descriptions == {"good": "It was great ."}
    for ds_cfg, match in (({"descriptions": {"cheap": "x"}}, "does not have"),
                          ({"descriptions": "toy/none.json"}, "descriptions file not found"),
                          ({"descriptions": ["x"]}, "give a JSON object"),
                          ({"description_template": "about {name}"}, "write the label's place"),
                          ({"description_copies": 2}, "description_copies without descriptions"),
                          ({"descriptions": {"good": "x"}, "description_copies": 0}, "integer >= 1")):
        with pytest.raises(ConfigError, match=match):
            resolve({**cfg, "datasets": {"toy": {**dataset, **ds_cfg}}}, "toy", "cls", 1)
    seen, fit = [], tt.TailtuneClassifier.fit

    def spy(self, *args, **kwargs):
        seen.append((kwargs.get("descriptions"), kwargs.get("description_copies")))
        return fit(self, *args, **kwargs)
    monkeypatch.setattr(tt.TailtuneClassifier, "fit", spy)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "_source"}))
    run_experiment(load_experiment(path))
    assert seen == [(plan.descriptions, 2)]


def test_a_runs_identity_does_not_move_between_versions(tmp_path):
    # finished runs stay finished: a new setting enters a run's identity only where it changes what the run computes
    # (NEUTRAL_SETTINGS), so these hashes, computed by the version before unlabelled texts reached experiments, hold;
    # `auto`'s moved since, on purpose, each time the default itself changed what it computes (layer_norm=auto and
    # early stopping counted from its floor; then its memory stage): its earlier runs are the previous default's
    from tailtune.experiment import resolve
    _write_data(tmp_path / "toy")
    cfg = {"backbone": "org/encoder", "data_dir": str(tmp_path), "output_dir": "unused",
           "train": {"epochs": 1, "batch_size": 8},
           "datasets": {"toy": {"train": "toy/train.tsv", "test": "toy/test.tsv"}},
           "runs": [{"presets": ["cls", "auto", "fastbert"], "seeds": [1]}]}
    assert {p: resolve(cfg, "toy", p, 1)[0].settings_hash for p in ("cls", "auto", "fastbert")} == \
        {"cls": "4be39397e5e59320", "auto": "a1b248ad52147072", "fastbert": "6e369617dfe377b9"}
    # every other preset's identity as of tailtune 0.2 with the cosine head's LayerNorm option: an option added to an
    # entry later must leave these alone (the `neutral_options` trait, or NEUTRAL_SETTINGS for a training setting);
    # a new preset adds its own line
    pinned = {"cls-relu": "fa088515563ce357", "cls-eta-norm": "320520490905ad0d", "cls-focal": "0beac361b477f866",
              "cls-prompt": "f2e57a893a1b7ce0", "cls-ln": "c4d37a9e59651999", "cls-pt-ln": "2808e7460caf94d1",
              "prompt": "facb27ec74a750a3", "prompt-ed": "ac92eb421b143fa6", "prompt-focal": "d473e14216290665",
              "prompt-eta-norm": "f44f07747483bada", "linear-probe": "354d7688c97b10bd", "bitfit": "8914ca889fd09e77",
              "adapter": "2fed659289782178", "adapter-pfeiffer": "d4a0efb7106c47d8",
              "prompt-adapter": "a0464b16498fc624", "lora": "f14b52028e3dd149", "prompt-lora": "fd239f29296cdc6a",
              "prefix": "59eeda88794ef1c5", "prompt-prefix": "258316e5a199f14a", "y-tuning": "d37ef9cef217379a",
              "y-tuning-ce": "f5f0ee92aead0751", "pabee": "ab28b210770bbfa5", "deebert": "0800fb073339f315",
              "soft-prompt": "1af957ab95a3fa1a"}
    assert set(pinned) | {"cls", "auto", "fastbert"} == set(tt.PRESETS)
    assert {p: resolve(cfg, "toy", p, 1)[0].settings_hash for p in pinned} == pinned
