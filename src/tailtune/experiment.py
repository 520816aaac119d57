"""Presets x datasets x seeds from a YAML file -> results.jsonl (resumable) + markdown tables."""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import yaml

from .api import TailtuneClassifier
from .data import read_dataset
from .metrics import export_weight_norms
from .train import TrainConfig

_DATASET_KEYS = {"train", "dev", "test", "theta", "template", "vanilla_template", "verbalizer", "max_length",
                 "text_col", "text_b_col", "label_col", "columns", "dev_fraction", "train_overrides",
                 "allow_empty_text"}
VANILLA_TEMPLATE = "{text} {mask} ."
TEMPLATE_STYLES = ("hybrid", "vanilla", "unified")


def load_experiment(path: str | Path, data_dir: str | None = None) -> dict:
    """Read and check an experiment YAML. Relative data paths resolve against ``data_dir``
    (argument, then $TAILTUNE_DATA, then the file's ``data_dir``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    for key in ("datasets", "runs"):
        if key not in cfg:
            raise ValueError(f"{path}: missing top-level key {key!r}")
    cfg["data_dir"] = data_dir or os.environ.get("TAILTUNE_DATA") or cfg.get("data_dir", ".")
    cfg.setdefault("output_dir", str(path.with_suffix("")))
    for name, ds in cfg["datasets"].items():
        bad = set(ds) - _DATASET_KEYS
        if bad:
            raise ValueError(f"{path}: dataset {name!r} has unknown key(s) {sorted(bad)}; "
                             f"known: {sorted(_DATASET_KEYS)}")
        if "train" not in ds or "test" not in ds:
            raise ValueError(f"{path}: dataset {name!r} needs 'train' and 'test' files")
    for i, run in enumerate(cfg["runs"]):
        for key in ("presets", "seeds"):
            if key not in run:
                raise ValueError(f"{path}: runs[{i}] needs {key!r}")
        unknown = [d for d in run.get("datasets", cfg["datasets"]) if d not in cfg["datasets"]]
        if unknown:
            raise ValueError(f"{path}: runs[{i}] names unknown dataset(s) {unknown}")
    TrainConfig(**cfg.get("train", {}))  # fail early on a bad key
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


def _read_split(cfg, ds_cfg, split, seed):
    """One split; ``{seed}`` in its path picks per-seed files (e.g. the 16-shot splits);
    ``columns`` names the columns of a file without a header row."""
    if ds_cfg.get(split) is None:
        return None
    columns = ds_cfg.get("columns")
    return read_dataset(Path(cfg["data_dir"]) / ds_cfg[split].format(seed=seed),
                        text_col=ds_cfg.get("text_col", "text"), label_col=ds_cfg.get("label_col", "label"),
                        text_b_col=ds_cfg.get("text_b_col"), header=columns is None, columns=columns,
                        allow_empty=ds_cfg.get("allow_empty_text", False))


def prompt_format(ds_cfg: dict, style: str, labels: list[str]) -> tuple[str | None, dict | None]:
    """(template, verbalizer) of a dataset in a prompt style: ``hybrid`` the dataset's hand-written
    template, ``vanilla`` only the text and the mask (soft tokens do the rest; ``vanilla_template``
    overrides), ``unified`` PPT's multiple-choice format over the label words."""
    if style not in TEMPLATE_STYLES:
        raise ValueError(f"template_style {style!r} is not one of {', '.join(TEMPLATE_STYLES)}")
    words = ds_cfg.get("verbalizer")
    if style == "hybrid":
        return ds_cfg.get("template"), words
    if style == "vanilla":
        return ds_cfg.get("vanilla_template", VANILLA_TEMPLATE), words
    from .ppt import unified_template
    return unified_template({str(k): v for k, v in (words or {}).items()}, labels)


def run_one(cfg: dict, dataset: str, preset: str, seed: int, out_dir: Path) -> dict:
    """One (dataset, preset, seed). A preset entry of the YAML may rename a base preset (``preset:``)
    and set classifier options, ``train:`` options, a ``backbone:`` and a ``template_style:``."""
    from .data import label_space
    ds_cfg = cfg["datasets"][dataset]
    train_ds, dev_ds, test_ds = (_read_split(cfg, ds_cfg, s, seed) for s in ("train", "dev", "test"))
    options = dict(cfg.get("presets", {}).get(preset, {}))
    base = options.pop("preset", preset)
    backbone = options.pop("backbone", cfg.get("backbone"))
    template, verbalizer = prompt_format(ds_cfg, options.pop("template_style", "hybrid"), label_space(train_ds.labels))
    tc = TrainConfig(**{**cfg.get("train", {}), **ds_cfg.get("train_overrides", {}), **options.pop("train", {}),
                        "seed": seed})
    theta = ds_cfg.get("theta", 0.65)
    clf = TailtuneClassifier(base, backbone, template=template,
                             verbalizer=verbalizer, max_length=ds_cfg.get("max_length"),
                             train_config=tc, theta=theta, dev_fraction=ds_cfg.get("dev_fraction", 0.1),
                             **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(train_ds, dev=dev_ds)
    t0 = time.perf_counter()
    report = clf.evaluate(test_ds)
    eval_seconds = time.perf_counter() - t0
    run_dir = out_dir / "runs" / dataset / preset / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    if cfg.get("weight_norms", True):
        export_weight_norms(clf.weight_norms(), run_dir, f"{dataset} / {preset} / seed {seed}")
    if cfg.get("save_models"):
        clf.save(run_dir / "model")
    r = clf.train_result_
    return {
        "dataset": dataset, "preset": preset, "seed": seed, "backbone": backbone or "default",
        "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
        "head_f1": report["head_f1"], "tail_f1": report["tail_f1"],
        "best_dev_macro_f1": r.best_dev_macro_f1, "best_step": r.best_step, "steps": r.steps,
        "epochs_run": round(r.epochs_run, 3), "train_seconds": round(r.seconds, 1),
        "seconds_per_epoch": round(r.seconds / max(r.epochs_run, 1e-9), 1),
        "eval_seconds": round(eval_seconds, 1), "n_trainable": clf.n_trainable_,
        "peak_memory_mb": r.peak_memory_mb and round(r.peak_memory_mb),
        "parameters": clf.model_.parameter_counts(),
        "config": clf.config.to_dict(), "train_config": tc.to_dict(),
        "warnings": sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)}),
    }


def run_experiment(cfg: dict, only: list[str] | None = None, log=print, shard: tuple[int, int] = (0, 1)) -> Path:
    """Run every planned (dataset, preset, seed) not already in ``results.jsonl``. ``shard=(k, n)``
    runs only every n-th planned run from the k-th, so n processes can share one GPU; they append
    whole lines to the same ``results.jsonl``."""
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.jsonl"
    done = {(r["dataset"], r["preset"], r["seed"]) for r in read_results(results_path)}
    plan = [p for p in planned_runs(cfg) if only is None or p[0] in only or p[1] in only]
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard {k}/{n}: need 0 <= k < n")
    plan = plan[k::n]
    for i, (dataset, preset, seed) in enumerate(plan, 1):
        if (dataset, preset, seed) in done:
            log(f"[{i}/{len(plan)}] {dataset} {preset} seed={seed}: done, skipped")
            continue
        log(f"[{i}/{len(plan)}] {dataset} {preset} seed={seed}: running")
        row = run_one(cfg, dataset, preset, seed, out_dir)
        _append_line(results_path, json.dumps(row) + "\n")
        log(f"    acc {row['accuracy']:.4f} macro-F1 {row['macro_f1']:.4f} head-F1 {row['head_f1']:.4f} "
            f"tail-F1 {row['tail_f1']:.4f} ({row['train_seconds']:.0f}s training)")
    table = results_table(read_results(results_path), cfg)
    (out_dir / "results.md").write_text(table)
    log(table)
    return out_dir


def _append_line(path: Path, line: str) -> None:
    """One write of a whole line with O_APPEND: lines of processes sharing the file never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
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


def results_table(rows: list[dict], cfg: dict | None = None) -> str:
    """The paper's layout: Acc and F1 per dataset (mean ± std over seeds), then Head-F1 and Tail-F1."""
    datasets = list((cfg or {}).get("datasets", {})) or sorted({r["dataset"] for r in rows})
    presets = []
    for ds, p, _ in (planned_runs(cfg) if cfg else [(r["dataset"], r["preset"], r["seed"]) for r in rows]):
        if p not in presets:
            presets.append(p)
    def group(p, d):
        return [r for r in rows if r["preset"] == p and r["dataset"] == d]
    out = []
    for metrics, names in ((("accuracy", "macro_f1"), ("Acc", "F1")), (("head_f1", "tail_f1"), ("Head-F1", "Tail-F1"))):
        head = "| method | " + " | ".join(f"{d} {n}" for d in datasets for n in names) + " | seeds |"
        out += [head, "|" + "---|" * (len(datasets) * 2 + 2)]
        for p in presets:
            cells = [_cell([r[m] for r in group(p, d) if not math.isnan(r[m])]) for d in datasets for m in metrics]
            seeds = "/".join(str(len(group(p, d))) for d in datasets)
            out.append(f"| {p} | " + " | ".join(cells) + f" | {seeds} |")
        out.append("")
    return "\n".join(out)
