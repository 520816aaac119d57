"""One self-contained HTML report of an experiment (``tailtune report RESULTS_DIR``).

It reads what ``tailtune run`` wrote — ``results.jsonl`` and, per run, ``runs/DATASET/PRESET/seedN/``
with ``report.json`` (per-class scores and the most frequent confusions), ``weight_norms.json`` and
``history.json`` (loss and dev metrics per step) — and, when given, speed / quality curves (the
early-exit benchmark's JSON). Figures are static PNGs drawn with matplotlib and embedded as data
URIs, so the file opens with no network and no other file. A section whose inputs the runs did not
record (older runs have no history or confusions) says so instead of being left out.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .experiment import latest, read_results, results_table

SECTIONS = ("tables", "per-class", "weight-norms", "confusion", "curves", "speed-quality")
_TITLES = {"tables": "Results (mean ± std over seeds)", "per-class": "Per-class F1 against training frequency",
           "weight-norms": "Classifier weight norms against training frequency",
           "confusion": "Confusion of tail classes", "curves": "Training curves",
           "speed-quality": "Speed / quality curves"}
_HEAD, _TAIL = "#2c7fb8", "#d95f0e"


def _figure_uri(fig: Any) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _subplots(n: int, width: float = 3.6, height: float = 2.8) -> tuple[Any, list]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _md_table(markdown: str) -> str:
    """The markdown tables of ``results_table`` as HTML."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            head, body = rows[0], rows[2:]
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead>"
                       "<tbody>" + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                           for r in body) + "</tbody></table>")
            rows.clear()
    for line in markdown.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            flush()
    flush()
    return "\n".join(out)


class _Runs:
    """The experiment's runs with what each recorded, grouped by dataset and preset."""

    def __init__(self, results_dir: Path) -> None:
        self.rows = latest(read_results(results_dir / "results.jsonl"))
        self.dir = results_dir
        self.datasets = list(dict.fromkeys(r["dataset"] for r in self.rows))
        self.presets = list(dict.fromkeys(r["preset"] for r in self.rows))

    def files(self, dataset: str, preset: str, name: str) -> list[Any]:
        """The JSON file ``name`` of every seed of (dataset, preset) that has one."""
        found = []
        for r in self.rows:
            if r["dataset"] == dataset and r["preset"] == preset:
                path = self.dir / "runs" / dataset / preset / f"seed{r['seed']}" / name
                if path.is_file():
                    found.append(json.loads(path.read_text()))
        return found

    def pairs(self, dataset: str, name: str) -> list[tuple[str, list[Any]]]:
        return [(p, f) for p in self.presets if (f := self.files(dataset, p, name))]


def _train_counts(runs: _Runs, dataset: str, preset: str, report: dict) -> dict[str, int]:
    """Training count per class: from the report, else from the run's weight norms (older runs)."""
    counts = {c: m["train_count"] for c, m in report["per_class"].items() if "train_count" in m}
    for norms in runs.files(dataset, preset, "weight_norms.json")[:1]:
        counts = counts or {r["label"]: r["train_count"] for r in norms}
    return counts


def _per_class(runs: _Runs, dataset: str) -> str | None:
    pairs = [(p, reps, n) for p, reps in runs.pairs(dataset, "report.json")
             if (n := _train_counts(runs, dataset, p, reps[0]))]
    if not pairs:
        return None
    fig, axes = _subplots(len(pairs))
    for ax, (preset, reps, counts) in zip(axes, pairs):
        classes = reps[0]["per_class"]
        for group, colour in (("head", _HEAD), ("tail", _TAIL)):
            names = [c for c, m in classes.items() if m["group"] == group and counts.get(c)]
            f1 = [statistics.mean(rep["per_class"][c]["f1"] for rep in reps if c in rep["per_class"]) for c in names]
            ax.scatter([counts[c] for c in names], f1, s=12, c=colour, label=group)
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{preset} ({len(reps)} seed{'s' * (len(reps) > 1)})", fontsize=9)
        ax.set_xlabel("training examples (log)", fontsize=8)
        ax.set_ylabel("F1", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return f'<img alt="per-class F1 vs frequency, {html.escape(dataset)}" src="{_figure_uri(fig)}">'


def _weight_norms(runs: _Runs, dataset: str) -> str | None:
    pairs = runs.pairs(dataset, "weight_norms.json")
    if not pairs:
        return None
    fig, axes = _subplots(len(pairs))
    for ax, (preset, norms) in zip(axes, pairs):
        rows = [r for r in norms[0] if r.get("weight_norm") is not None]
        ax.scatter([max(r["train_count"], 1) for r in rows], [r["weight_norm"] for r in rows], s=12, c=_HEAD)
        ax.set_xscale("log")
        ax.set_title(preset, fontsize=9)
        ax.set_xlabel("training examples (log)", fontsize=8)
        ax.set_ylabel("||w_c||", fontsize=8)
    fig.tight_layout()
    return f'<img alt="weight norms vs frequency, {html.escape(dataset)}" src="{_figure_uri(fig)}">'


def _confusion(runs: _Runs, dataset: str) -> str | None:
    pairs = [(p, reps) for p, reps in runs.pairs(dataset, "report.json") if "confusions" in reps[0]]
    if not pairs:
        return None
    parts = []
    for preset, reps in pairs:
        tail = {c for c, m in reps[0]["per_class"].items() if m["group"] == "tail"}
        counts: dict[tuple[str, str], int] = {}
        for rep in reps:
            for gold, pred, n in rep["confusions"]:
                if gold in tail:
                    counts[(gold, pred)] = counts.get((gold, pred), 0) + n
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:12]
        body = "".join(f"<tr><td>{html.escape(g)}</td><td>{html.escape(p)}</td><td>{n}</td></tr>"
                       for (g, p), n in top) or "<tr><td colspan=3>no tail example was confused</td></tr>"
        parts.append(f"<div class=card><h4>{html.escape(preset)}</h4><table><thead><tr><th>tail class</th>"
                     f"<th>predicted as</th><th>errors ({len(reps)} seed{'s' * (len(reps) > 1)})</th></tr></thead>"
                     f"<tbody>{body}</tbody></table></div>")
    return "<div class=cards>" + "".join(parts) + "</div>"


def _curves(runs: _Runs, dataset: str) -> str | None:
    pairs = runs.pairs(dataset, "history.json")
    if not pairs:
        return None
    fig, axes = _subplots(2, width=5.0, height=3.0)
    for preset, hists in pairs:
        h = hists[0]
        axes[0].plot([r["step"] for r in h], [r["loss"] for r in h], lw=1, label=preset)
        dev = [r for r in h if "dev_macro_f1" in r]
        axes[1].plot([r["step"] for r in dev], [r["dev_macro_f1"] for r in dev], "o-", ms=3, lw=1, label=preset)
    axes[0].set_title("training loss (first seed)", fontsize=9)
    axes[1].set_title("dev macro-F1 (first seed)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return f'<img alt="training curves, {html.escape(dataset)}" src="{_figure_uri(fig)}">'


def _speed_quality(curves: list[Path]) -> str | None:
    """Early-exit curves (``benchmarks/serving/early_exit.py`` JSON: dataset -> curve -> batch -> points)."""
    series = []
    for path in curves:
        data = json.loads(Path(path).read_text())
        for dataset, entry in data.items():
            for batch, curve in entry.get("curve", {}).items():
                points = curve.get("points", [])
                if points:
                    series.append((f"{dataset}, batch {batch}", points))
    if not series:
        return None
    fig, axes = _subplots(len(series))
    for ax, (name, points) in zip(axes, series):
        ax.plot([p["speedup"] for p in points], [100 * p["macro_f1"] for p in points], "o-", ms=3)
        ax.set_xlabel("speed-up over full depth", fontsize=8)
        ax.set_ylabel("macro-F1", fontsize=8)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return f'<img alt="speed / quality" src="{_figure_uri(fig)}">'


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}img{max-width:100%}.missing{color:#888;font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card h4{margin:.2em 0}section{margin-bottom:2em}"""


def build_report(results_dir: str | Path, curves: list[str | Path] | None = None) -> str:
    """The report of ``results_dir`` as one HTML string."""
    results_dir = Path(results_dir)
    runs = _Runs(results_dir)
    if not runs.rows:
        raise ConfigError(f"{results_dir}: no results.jsonl with finished runs; `tailtune run EXPERIMENT.yaml` "
                          f"writes one, then `tailtune report` its output_dir")
    missing = '<p class=missing>not recorded by these runs ({why})</p>'
    body = {"tables": _md_table(results_table(runs.rows))}
    per_dataset = {"per-class": _per_class, "weight-norms": _weight_norms, "confusion": _confusion, "curves": _curves}
    why = {"per-class": "no training counts in report.json or weight_norms.json", "weight-norms": "weight_norms: false",
           "confusion": "runs before tailtune recorded confusions", "curves": "runs before history.json was written"}
    for section, draw in per_dataset.items():
        parts = []
        for dataset in runs.datasets:
            drawn = draw(runs, dataset)
            parts.append(f"<h3>{html.escape(dataset)}</h3>" + (drawn or missing.format(why=why[section])))
        body[section] = "\n".join(parts)
    speed = _speed_quality([Path(c) for c in curves or []])
    body["speed-quality"] = speed or missing.format(why="pass --curves with an early-exit benchmark JSON")
    seeds = sorted({r["seed"] for r in runs.rows})
    toc = "".join(f'<li><a href="#{s}">{_TITLES[s]}</a></li>' for s in SECTIONS)
    sections = "\n".join(f'<section id="{s}"><h2>{_TITLES[s]}</h2>{body[s]}</section>' for s in SECTIONS)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>tailtune report: {html.escape(results_dir.name)}"
            f"</title><style>{_STYLE}</style></head><body><h1>tailtune report: {html.escape(str(results_dir))}</h1>"
            f"<p>{len(runs.rows)} runs; datasets {', '.join(map(html.escape, runs.datasets))}; presets "
            f"{', '.join(map(html.escape, runs.presets))}; seeds {', '.join(map(str, seeds))}.</p>"
            f"<ul>{toc}</ul>{sections}</body></html>")


def write_report(results_dir: str | Path, out: str | Path | None = None,
                 curves: list[str | Path] | None = None) -> Path:
    """Write the report (default ``RESULTS_DIR/report.html``) atomically; returns its path."""
    from .artefacts import atomic_write_text
    out = Path(out) if out is not None else Path(results_dir) / "report.html"
    atomic_write_text(out, build_report(results_dir, curves))
    return out
