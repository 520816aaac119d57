"""Presets x datasets x seeds from a YAML file -> results.jsonl (resumable) + markdown tables.

The whole plan is checked before the first run: every preset and variant resolves to a valid
classifier for every dataset, every data file of every seed exists and reads, dev and test labels
were seen in training, and the training settings are valid. A finished run is recognised by a hash
of its full settings (data, classifier, training, seed, backbone), so changing any of them runs it again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from .api import TailtuneClassifier, check_unlabeled
from .artefacts import check_writable, jsonable, write_json
from .config import PRESETS, ClassifierConfig, config_from_preset
from .data import TextDataset, check_labels, label_space, read_dataset
from .errors import ConfigError, did_you_mean
from .loop import NOT_RESULT_SETTINGS, TrainConfig
from .metrics import export_weight_norms
from .training import data_hash

_DATASET_KEYS = {"train", "dev", "test", "theta", "template", "vanilla_template", "verbalizer", "max_length",
                 "text_col", "text_b_col", "label_col", "columns", "dev_fraction", "train_overrides",
                 "allow_empty_text", "unlabeled", "descriptions", "description_template", "description_copies"}
_TOP_KEYS = {"backbone", "data_dir", "output_dir", "train", "datasets", "presets", "runs", "weight_norms",
             "save_models", "ray"}
_RUN_KEYS = {"presets", "seeds", "datasets"}
_VARIANT_KEYS = {"preset", "backbone", "template_style", "train"}
VANILLA_TEMPLATE = "{text} {mask} ."
TEMPLATE_STYLES = ("hybrid", "vanilla", "unified")


# training settings added after results were recorded, at the value that computes what runs did before they
# existed: left out of a run's identity at that value, so finished runs stay finished
NEUTRAL_SETTINGS = {"patience_from": 0.0, "weight_average": None, "select_metric": None, "layer_lr_decay": None}


def _unknown(keys: Any, known: set, where: str) -> None:
    bad = sorted(set(keys) - known)
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}{did_you_mean(bad[0], known)}; known: {sorted(known)}")


def _train_config(values: dict, where: str) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    _unknown(values, fields, f"{where} train")
    return TrainConfig(**values)


def load_experiment(path: str | Path, data_dir: str | None = None) -> dict:
    """Read and check an experiment YAML. Relative data paths resolve against ``data_dir``
    (argument, then $TAILTUNE_DATA, then the file's ``data_dir``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (datasets, runs, ...) at the top")
    _unknown(cfg, _TOP_KEYS, str(path))
    for key in ("datasets", "runs"):
        if key not in cfg:
            raise ConfigError(f"{path}: missing top-level key {key!r}")
    if not isinstance(cfg["datasets"], dict) or not isinstance(cfg["runs"], list):
        raise ConfigError(f"{path}: 'datasets' must be a mapping and 'runs' a list")
    cfg["data_dir"] = data_dir or os.environ.get("TAILTUNE_DATA") or cfg.get("data_dir", ".")
    cfg.setdefault("output_dir", str(path.with_suffix("")))
    for name, ds in cfg["datasets"].items():
        if not isinstance(ds, dict):
            raise ConfigError(f"{path}: dataset {name!r} must be a mapping (train, test, ...)")
        _unknown(ds, _DATASET_KEYS, f"{path}: dataset {name!r}")
        if "train" not in ds or "test" not in ds:
            raise ConfigError(f"{path}: dataset {name!r} needs 'train' and 'test' files")
    for i, run in enumerate(cfg["runs"]):
        if not isinstance(run, dict):
            raise ConfigError(f"{path}: runs[{i}] must be a mapping with presets and seeds")
        _unknown(run, _RUN_KEYS, f"{path}: runs[{i}]")
        for key in ("presets", "seeds"):
            if key not in run:
                raise ConfigError(f"{path}: runs[{i}] needs {key!r}")
        if not isinstance(run["seeds"], list) or not all(isinstance(s, int) for s in run["seeds"]):
            raise ConfigError(f"{path}: runs[{i}].seeds must be a list of integers, e.g. [13, 21, 42]; "
                              f"got {run['seeds']!r}")
        if not isinstance(run["presets"], list):
            raise ConfigError(f"{path}: runs[{i}].presets must be a list, e.g. [cls, prompt]")
        unknown = [d for d in run.get("datasets", cfg["datasets"]) if d not in cfg["datasets"]]
        if unknown:
            raise ConfigError(f"{path}: runs[{i}] names unknown dataset(s) {unknown}")
    for name, variant in (cfg.get("presets") or {}).items():
        if not isinstance(variant, dict):
            raise ConfigError(f"{path}: preset variant {name!r} must be a mapping")
    _train_config(dict(cfg.get("train") or {}), str(path))
    cfg["_source"] = str(path)
    return cfg


def planned_runs(cfg: dict) -> list[tuple[str, str, int]]:
    """(dataset, preset, seed) triples in file order, without duplicates."""
    out = []
    for run in cfg["runs"]:
        for ds in run.get("datasets", list(cfg["datasets"])):
            for preset in run["presets"]:
                for seed in run["seeds"]:
                    if (ds, preset, seed) not in out:
                        out.append((ds, preset, seed))
    return out


def _read_split(cfg: dict, ds_cfg: dict, split: str, seed: int) -> TextDataset | None:
    """One split; ``{seed}`` in its path picks per-seed files (e.g. the 16-shot splits);
    ``columns`` names the columns of a file without a header row. ``unlabeled`` is read without labels (a .txt
    file is one text per line)."""
    if ds_cfg.get(split) is None:
        return None
    columns = ds_cfg.get("columns")
    label_col = None if split == "unlabeled" else ds_cfg.get("label_col", "label")
    return read_dataset(Path(cfg["data_dir"]) / str(ds_cfg[split]).format(seed=seed),
                        text_col=ds_cfg.get("text_col", "text"), label_col=label_col,
                        text_b_col=ds_cfg.get("text_b_col"), header=columns is None, columns=columns,
                        allow_empty=ds_cfg.get("allow_empty_text", False))


def prompt_format(ds_cfg: dict, style: str, labels: list[str]) -> tuple[str | None, dict | None]:
    """(template, verbalizer) of a dataset in a prompt style: ``hybrid`` the dataset's hand-written
    template, ``vanilla`` only the text and the mask (soft tokens do the rest; ``vanilla_template``
    overrides), ``unified`` PPT's multiple-choice format over the label words."""
    if style not in TEMPLATE_STYLES:
        raise ConfigError(f"template_style {style!r} is not one of {', '.join(TEMPLATE_STYLES)}")
    words = ds_cfg.get("verbalizer")
    if style == "hybrid":
        return ds_cfg.get("template"), words
    if style == "vanilla":
        return ds_cfg.get("vanilla_template", VANILLA_TEMPLATE), words
    from .stages.ppt import unified_template
    return unified_template({str(k): v for k, v in (words or {}).items()}, labels)


@dataclasses.dataclass
class Plan:
    """One run, resolved: what it trains on, with which classifier and settings."""

    dataset: str
    preset: str
    seed: int
    base: str
    backbone: str | None
    config: ClassifierConfig
    verbalizer: dict | None
    train_config: TrainConfig
    settings_hash: str
    mlm_weight: float = 1e-4  # (with unlabelled texts: PET's auxiliary MLM loss)
    descriptions: dict | None = None  # label -> description(s), joining the training examples
    description_copies: int = 4


def resolve(cfg: dict, dataset: str, preset: str, seed: int) -> tuple[Plan, dict[str, TextDataset | None]]:
    """A run's classifier, training settings and data, checked; raises with what to fix."""
    where = f"{cfg.get('_source', 'experiment')}: {dataset} / {preset} / seed {seed}"
    ds_cfg = cfg["datasets"][dataset]
    data = {s: _read_split(cfg, ds_cfg, s, seed) for s in ("train", "dev", "test")}
    labels = label_space(data["train"].labels)
    for split in ("dev", "test"):
        if data[split] is not None:
            check_labels(data[split], labels, split)
    descriptions, copies = _descriptions(cfg, ds_cfg, data["train"], labels, where)
    options = dict((cfg.get("presets") or {}).get(preset, {}))
    base = options.pop("preset", preset)
    backbone = options.pop("backbone", cfg.get("backbone"))
    train_options = options.pop("train", {}) or {}
    mlm_weight = float(options.pop("mlm_weight", 1e-4))
    template, words = prompt_format(ds_cfg, options.pop("template_style", "hybrid"), labels)
    context = {k: v for k, v in (("template", template),) if v is not None}
    try:
        config = config_from_preset(base, defaults=context, max_length=ds_cfg.get("max_length"), **options)
        recipe = PRESETS[base].train if base in PRESETS else {}  # the preset's recipe, then the file's settings
        tc = _train_config({**recipe, **(cfg.get("train") or {}), **(ds_cfg.get("train_overrides") or {}),
                            **train_options, "seed": seed}, where)
        if tc.track and not tc.run_name:  # each run its own name in the tracker
            tc = dataclasses.replace(tc, run_name=f"{dataset}/{preset}/seed{seed}")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    # unlabelled texts reach the runs whose classifier learns from them (PET's MLM loss, FastBERT's exits); the
    # other presets of the grid train as if the dataset gave none, and their identity leaves the file out
    data["unlabeled"] = _read_split(cfg, ds_cfg, "unlabeled", seed) if config.takes_unlabeled(mlm_weight) else None
    if data["unlabeled"] is not None:
        try:
            check_unlabeled(config, data["train"], mlm_weight)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    verbalizer = {str(k): v for k, v in words.items()} if words and config.uses_label_words else None
    identity = {"dataset": {k: v for k, v in ds_cfg.items() if k not in ("train_overrides", "unlabeled")},
                "files": {s: str(ds_cfg.get(s, "")).format(seed=seed) for s in ("train", "dev", "test")},
                "data": {s: data_hash(data[s]) for s in ("train", "dev", "test")},
                "preset": base, "backbone": backbone or "default",
                "config": config.to_dict(), "verbalizer": verbalizer,
                "train": {k: v for k, v in tc.to_dict().items()
                          if k not in NOT_RESULT_SETTINGS and NEUTRAL_SETTINGS.get(k, ...) != v}}
    if data["unlabeled"] is not None:
        identity["unlabeled"] = {"file": str(ds_cfg["unlabeled"]).format(seed=seed),
                                 "data": data_hash(data["unlabeled"]), "mlm_weight": mlm_weight}
    if descriptions:  # (their texts, not only the file's name: editing the file re-runs)
        identity["descriptions"] = {"texts": descriptions, "copies": copies}
    digest = hashlib.sha256(json.dumps(jsonable(identity), sort_keys=True).encode()).hexdigest()[:16]
    return Plan(dataset, preset, seed, base, backbone, config, verbalizer, tc, digest, mlm_weight, descriptions,
                copies), data


def _descriptions(cfg: dict, ds_cfg: dict, train: TextDataset, labels: list[str], where: str) -> tuple[dict | None, int]:
    """A dataset's label descriptions (``descriptions``: a JSON file under the data directory, or a mapping;
    ``description_template`` for the labels it leaves out) and their ``description_copies``, checked against its
    training data; every run of the dataset trains with them, as ``train --descriptions`` does."""
    from .data import check_descriptions
    from .errors import TailtuneError
    from .zeroshot import read_descriptions
    source, copies = ds_cfg.get("descriptions"), ds_cfg.get("description_copies", 4)
    if isinstance(source, str):
        source = Path(cfg["data_dir"]) / source
    try:
        descriptions = read_descriptions(labels, source, ds_cfg.get("description_template"))
        if descriptions:
            check_descriptions(train, descriptions, copies)
        elif "description_copies" in ds_cfg:
            raise ConfigError("description_copies without descriptions: add `descriptions:` (a JSON file or a "
                              "mapping, label -> description) or `description_template:`, or drop it")
    except TailtuneError as e:
        raise ConfigError(f"{where}: {e}") from None
    return descriptions, copies


def check_plan(cfg: dict, plan: list[tuple[str, str, int]]) -> dict[tuple[str, str, int], str]:
    """Resolve every planned run before any trains; {run: settings hash}."""
    check_writable(cfg["output_dir"], overwrite=True)
    hashes = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each run warns again when it starts
        for run in plan:
            hashes[run] = resolve(cfg, *run)[0].settings_hash
    return hashes


def run_one(cfg: dict, dataset: str, preset: str, seed: int, out_dir: Path,
            log: Callable[[str], None] | None = None) -> dict:
    """One (dataset, preset, seed). A preset entry of the YAML may rename a base preset (``preset:``) and
    set axis entries and options, ``mlm_weight`` (with a dataset's ``unlabeled`` texts), ``train:`` options, a
    ``backbone:`` and a ``template_style:``. ``log`` receives what training prints (the trainable parameters, a
    line per dev evaluation, what each stage does)."""
    plan, data = resolve(cfg, dataset, preset, seed)
    ds_cfg = cfg["datasets"][dataset]
    clf = TailtuneClassifier(plan.base, plan.backbone, config=plan.config, verbalizer=plan.verbalizer,
                             train_config=plan.train_config, theta=ds_cfg.get("theta", 0.65),
                             dev_fraction=ds_cfg.get("dev_fraction", 0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(data["train"], dev=data["dev"], log=log, descriptions=plan.descriptions,
                description_copies=plan.description_copies,
                **({} if data["unlabeled"] is None else {"unlabeled": data["unlabeled"].texts,
                                                         "mlm_weight": plan.mlm_weight}))
    t0 = time.perf_counter()
    report = clf.evaluate(data["test"])
    eval_seconds = time.perf_counter() - t0
    run_dir = out_dir / "runs" / dataset / preset / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "report.json", report)
    write_json(run_dir / "history.json", clf.train_result_.history)
    if cfg.get("weight_norms", True):
        export_weight_norms(clf.weight_norms(), run_dir, f"{dataset} / {preset} / seed {seed}")
    if cfg.get("save_models"):
        clf.save(run_dir / "model", overwrite=True)
    r = clf.train_result_
    return {
        "dataset": dataset, "preset": preset, "seed": seed, "backbone": plan.backbone or "default",
        "settings_hash": plan.settings_hash,
        "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
        "head_f1": report["head_f1"], "tail_f1": report["tail_f1"], "group_rule": report["group_rule"],
        "many_f1": report["many_f1"], "medium_f1": report["medium_f1"], "few_f1": report["few_f1"],
        "best_dev_macro_f1": r.best_dev_macro_f1, "best_step": r.best_step, "steps": r.steps,
        "epochs_run": round(r.epochs_run, 3), "train_seconds": round(r.seconds, 1),
        "seconds_per_epoch": round(r.seconds / max(r.epochs_run, 1e-9), 1),
        "eval_seconds": round(eval_seconds, 1), "n_trainable": clf.n_trainable_,
        "unlabeled_texts": clf.unlabeled_texts_,
        "peak_memory_mb": r.peak_memory_mb and round(r.peak_memory_mb),
        "parameters": clf.model_.parameter_counts(),
        "config": clf.config.to_dict(), "train_config": plan.train_config.to_dict(),
        "warnings": sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)}),
    }


def _finished(rows: list[dict]) -> tuple[set, set]:
    """(settings hashes, legacy (dataset, preset, seed) keys) of finished runs."""
    hashes = {r["settings_hash"] for r in rows if r.get("settings_hash")}
    legacy = {(r["dataset"], r["preset"], r["seed"]) for r in rows if not r.get("settings_hash")}
    return hashes, legacy


def run_experiment(cfg: dict, only: list[str] | None = None, log: Callable[[str], None] = print,
                   shard: tuple[int, int] = (0, 1), ray: str | None = None) -> Path:
    """Run every planned (dataset, preset, seed) not already finished with the same settings.
    ``shard=(k, n)`` runs only every n-th planned run from the k-th, so n processes can share one
    GPU; they append whole lines to the same ``results.jsonl``. ``ray`` sends the runs to a Ray
    cluster instead (``auto``: the running one, ``local``: a new local instance, or an address)."""
    out_dir = Path(cfg["output_dir"])
    k, n = shard
    if not 0 <= k < n:
        raise ConfigError(f"shard {k}/{n}: need 0 <= k < n")
    plan = [p for p in planned_runs(cfg) if only is None or p[0] in only or p[1] in only]
    if only and not plan:
        raise ConfigError(f"--only {only}: no planned run has these datasets or presets")
    plan = plan[k::n]
    hashes = check_plan(cfg, plan)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.jsonl"
    done, legacy = _finished(read_results(results_path))
    todo = []
    for i, (dataset, preset, seed) in enumerate(plan, 1):
        if hashes[(dataset, preset, seed)] in done or (dataset, preset, seed) in legacy:
            log(f"[{i}/{len(plan)}] {dataset} {preset} seed={seed}: done, skipped")
        else:
            todo.append((f"[{i}/{len(plan)}] {dataset} {preset} seed={seed}", (dataset, preset, seed)))

    def finished(name: str, row: dict) -> None:  # each result is appended once, by this process
        append_line(results_path, json.dumps(jsonable(row)))
        log(f"{name}: acc {row['accuracy']:.4f} macro-F1 {row['macro_f1']:.4f} head-F1 {_f(row['head_f1'])} "
            f"tail-F1 {_f(row['tail_f1'])} ({row['train_seconds']:.0f}s training)")
    if ray is not None:
        from .ray_runner import run_on_ray
        run_on_ray(cfg, todo, out_dir, ray, run_one, finished, log)
    for name, (dataset, preset, seed) in todo if ray is None else ():
        log(f"{name}: running")
        finished(name, run_one(cfg, dataset, preset, seed, out_dir, log=lambda line: log(f"  {line}")))
    table = results_table(read_results(results_path), cfg)
    (out_dir / "results.md").write_text(table)
    log(table)
    return out_dir


def _f(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def append_line(path: Path, line: str) -> None:
    """Append one line with a single O_APPEND write (lines of processes sharing the file never
    interleave), starting a fresh line when the file ends in a half-written one."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        fresh = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if fresh else "") + line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def read_results(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}, line {lineno}: unreadable result line skipped (it will be re-run)")
    return rows


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    v = 100 * np.array(values)
    return f"{v.mean():.1f}" + (f" ± {v.std(ddof=0):.1f}" if len(v) > 1 else "")


def latest(rows: list[dict]) -> list[dict]:
    """The last row of every (dataset, preset, seed): a re-run with new settings replaces the old one."""
    last = {(r["dataset"], r["preset"], r["seed"]): r for r in rows}
    return list(last.values())


def results_table(rows: list[dict], cfg: dict | None = None) -> str:
    """The paper's layout: Acc and F1 per dataset (mean ± std over seeds), then Head-F1 and Tail-F1."""
    rows = latest(rows)
    datasets = list((cfg or {}).get("datasets", {})) or sorted({r["dataset"] for r in rows})
    presets: list[str] = []
    for ds, p, _ in (planned_runs(cfg) if cfg else [(r["dataset"], r["preset"], r["seed"]) for r in rows]):
        if p not in presets:
            presets.append(p)

    def group(p: str, d: str) -> list[dict]:
        return [r for r in rows if r["preset"] == p and r["dataset"] == d]
    out = []
    for metrics, names in ((("accuracy", "macro_f1"), ("Acc", "F1")), (("head_f1", "tail_f1"), ("Head-F1", "Tail-F1"))):
        head = "| method | " + " | ".join(f"{d} {n}" for d in datasets for n in names) + " | seeds |"
        out += [head, "|" + "---|" * (len(datasets) * 2 + 2)]
        for p in presets:
            cells = [_cell([r[m] for r in group(p, d) if r.get(m) is not None and not math.isnan(r[m])])
                     for d in datasets for m in metrics]
            seeds = "/".join(str(len(group(p, d))) for d in datasets)
            out.append(f"| {p} | " + " | ".join(cells) + f" | {seeds} |")
        out.append("")
    return "\n".join(out)
