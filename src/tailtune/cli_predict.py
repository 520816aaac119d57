"""The ``evaluate`` and ``predict`` commands: loading a classifier for prediction, reports, JSON lines."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable


def number_list(kind: Callable[[str], Any], what: str) -> Callable[[str], list]:
    """An argparse type for a comma-separated list, whose error names the item that is wrong."""
    def parse(text: str) -> list:
        items = [x.strip() for x in text.split(",") if x.strip()]
        for x in items:
            try:
                kind(x)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{x!r} in {text!r}: give comma-separated {what}, e.g. "
                                                 f"{'0.1,0.3' if kind is float else '1,64'}") from None
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated {what}")
        return [kind(x) for x in items]
    return parse


def count_type(text: str) -> int:
    """An argparse type for a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return n


def add_loading_args(p: argparse.ArgumentParser) -> None:
    from .heads.early_exit import EXIT_RULES
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "auto"],
                   help="fp32, bf16 autocast, int8 (dynamic quantisation of the linear layers, CPU) or auto (fp32 or "
                        "bf16, whichever a short probe finds faster here) (default: fp32)")
    p.add_argument("--compile", action="store_true",
                   help="run the encoder through torch.compile: the first batch compiles (tens of seconds on a small "
                        "CPU), the rest run faster, so it pays on many texts (README: Compiled inference)")
    p.add_argument("--early-exit", action="store_true", help="an early-exit classifier leaves at the first layer "
                   "whose exit rule fires (the rule saved with it, or the --exit-* options below)")
    p.add_argument("--exit-rule", default=None, choices=EXIT_RULES,
                   help="early exit: the rule (default: the classifier's)")
    p.add_argument("--exit-threshold", type=float, default=None,
                   help="early exit: entropy, normalized-entropy (entropy / ln(classes), 0 to 1) or confidence "
                        "threshold (default: the classifier's)")
    p.add_argument("--exit-patience", type=int, default=None, help="early exit: layers in a row that must agree "
                   "(default: the classifier's)")
    p.add_argument("--backbone", default=None, help="base backbone for a saved task module (default: its own)")
    p.add_argument("--max-length", type=count_type, default=None,
                   help="read up to this many tokens of each text (default: the length each classifier was trained "
                        "at); training may cut long texts short for cost, prediction can read more (README: Reading "
                        "more of each text at prediction)")


def _read(args: argparse.Namespace, path: str | None) -> Any:
    from .data import read_dataset
    return read_dataset(path, args.text_col, args.label_col, args.text_b_col) if path else None


def _resolve_model(args: argparse.Namespace) -> None:
    """A Hub repo id (owner/name) that is no local path is downloaded once; ``args.model`` becomes its path."""
    from .hub import resolve_classifier
    args.model = str(resolve_classifier(args.model))


def _load_for_prediction(args: argparse.Namespace) -> Any:
    from .api import TailtuneClassifier
    if args.compile:
        from .device import check_compiler, resolve_device
        check_compiler(resolve_device(args.device))  # before loading
    clf = TailtuneClassifier.load(args.model, args.device, args.backbone).set_precision(args.precision)
    clf.set_max_length(args.max_length)
    if args.early_exit or args.exit_rule or args.exit_threshold is not None or args.exit_patience is not None:
        clf.set_early_exit(args.exit_rule, args.exit_threshold, args.exit_patience)
    return clf.set_compile() if args.compile else clf


def test_prior_line(clf: Any) -> str:
    """The class shares ``--test-prior em`` estimated for the texts last predicted, largest first."""
    shares = sorted(clf.test_prior_shares_.items(), key=lambda kv: -kv[1])
    return ("test prior estimated from the texts (EM): " + ", ".join(f"{y} {100 * q:.1f}%" for y, q in shares[:10])
            + (f", ... ({len(shares)} classes)" if len(shares) > 10 else ""))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .artefacts import write_json
    from .cli_args import fill_columns
    from .metrics import format_report
    _resolve_model(args)  # (a Hub classifier is fetched first: its saved columns say how to read --data)
    fill_columns(args, args.model)
    data = _read(args, args.data)
    clf = _load_for_prediction(args).set_test_prior(args.test_prior)
    report = clf.evaluate(data, theta=args.theta, groups=args.groups)
    if args.test_prior == "em":
        print(test_prior_line(clf))
        report["test_prior_estimate"] = clf.test_prior_shares_
    if hasattr(clf, "layers_used_"):
        report["mean_layers"] = float(clf.layers_used_.float().mean())
    print(format_report(report))
    if args.exit_curve:
        from .early_exit import exit_curve
        enc = clf.model_.encode(data.texts, data.texts_b)
        rule = args.exit_rule or clf.model_.head.rule
        print(f"speed / quality of early exit ({rule}):")
        print(f"{'threshold':>10}{'macro-F1':>10}{'share':>8}{'accuracy':>10}{'layers':>8}" +
              "".join(f"{f'texts/s @{b}':>14}{'speed-up':>10}" for b in args.exit_batch_sizes))
        curves = {b: exit_curve(clf.model_, enc, data.labels, args.exit_curve, rule, b, clf.theta,
                                repeats=args.exit_repeats)
                  for b in args.exit_batch_sizes}
        for k, row in enumerate(curves[args.exit_batch_sizes[0]]):
            t = "full" if row["threshold"] is None else f"{row['threshold']:g}"
            share = f"{100 * row['f1_share']:.1f}%" if row["f1_share"] is not None else "–"
            print(f"{t:>10}{row['macro_f1']:>10.4f}{share:>8}{row['accuracy']:>10.4f}{row['mean_layers']:>8.2f}"
                  + "".join(f"{curves[b][k]['texts_per_second']:>14.1f}{curves[b][k]['speedup']:>9.2f}x"
                            for b in args.exit_batch_sizes))
        report["exit_curve"] = curves
    if args.output:
        write_json(args.output, report)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .cli_args import fill_columns
    from .data import columns, read_dataset
    from .errors import ConfigError
    from .multitask import task_dirs
    if args.data and args.text:
        raise ConfigError("give texts or --data FILE, not both")
    if not args.data and not args.text:
        raise ConfigError("give texts to classify, or --data FILE")
    _resolve_model(args)  # (a Hub classifier is fetched first: its saved columns say how to read --data)
    fill_columns(args, args.model)
    if args.data:  # the task column, when named, is read where labels would be
        id_col = args.id_col or ("id" if "id" in columns(args.data) else None)
        ds = read_dataset(args.data, args.text_col, args.task_col, args.text_b_col, id_col=id_col,
                          allow_empty=True, keep_blank_rows=True)
        texts, texts_b, row_tasks = ds.texts, ds.texts_b, (ds.labels if args.task_col else None)
        ids: list[Any] = ds.ids if ds.ids is not None else list(range(len(texts)))
        empty = [str(ids[i]) for i, t in enumerate(texts) if not t.strip()]
        if empty:
            warnings.warn(f"{len(empty)} row(s) of {args.data} have an empty text (id {', '.join(empty[:8])}"
                          f"{' ...' if len(empty) > 8 else ''}); each is predicted as an empty input (with the "
                          f"template, if the classifier has one), not skipped")
    else:
        texts, texts_b, row_tasks, ids = list(args.text), None, None, list(range(len(args.text)))
    dirs = task_dirs(args.model)
    if (Path(args.model) / "tailtune.json").is_file() and not row_tasks:
        if args.task:
            raise ConfigError(f"{args.model} is a single classifier; --task picks a task of a directory of task "
                              f"modules")
        clf = _load_for_prediction(args).set_test_prior(args.test_prior)
        probs = clf.predict_proba(texts, texts_b)
        if args.test_prior == "em":
            print(test_prior_line(clf), file=sys.stderr)
        _write_predictions(args, ids, texts, None, probs, lambda i: clf.labels_)
        return 0
    if args.test_prior != "train":
        raise ConfigError("--test-prior em applies to a single classifier, not to a directory of task modules")
    tasks = row_tasks or ([args.task] * len(texts) if args.task else None)
    if tasks is None:
        if len(dirs) > 1:
            raise ConfigError(f"{args.model} holds tasks {', '.join(dirs)}: pick one with --task NAME, or "
                              f"name a task per row with --data FILE --task-col COLUMN")
        tasks = list(dirs) * len(texts)
    unknown = sorted(set(tasks) - set(dirs))
    if unknown:
        raise ConfigError(f"unknown task(s) {unknown} in {args.model}; it holds: {', '.join(dirs)}")
    from .device import resolve_device
    from .multitask import TaskSet
    task_set = TaskSet(args.backbone, str(resolve_device(args.device)), args.precision, compile=args.compile,
                       max_length=args.max_length)
    for name in dict.fromkeys(tasks):
        task_set.add(dirs[name], name)
    probs = [s.softmax(-1).numpy() for s in task_set.logits(texts, tasks, texts_b)]
    _write_predictions(args, ids, texts, tasks, probs, lambda i: task_set.tasks[tasks[i]].labels)
    return 0


def _write_predictions(args: argparse.Namespace, ids: list, texts: list[str], tasks: list[str] | None,
                       probs: Any, labels_of: Callable[[int], list[str]]) -> None:
    """JSON lines, one per input row in input order, with its id; never NaN (a non-finite score is null)."""
    from .artefacts import atomic_open
    broken = 0
    with atomic_open(args.output) if args.output else contextlib.nullcontext(sys.stdout) as out:
        for i, (text, p) in enumerate(zip(texts, probs)):
            best = int(p.argmax())
            score = float(p[best])
            finite = math.isfinite(score)
            broken += not finite
            row = {"id": ids[i], "text": text, **({"task": tasks[i]} if tasks else {}),
                   "label": labels_of(i)[best] if finite else None, "score": round(score, 6) if finite else None}
            if args.probabilities:
                row["probabilities"] = {y: round(float(v), 6) if math.isfinite(v) else None
                                        for y, v in zip(labels_of(i), p.tolist())}
            out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    if broken:
        warnings.warn(f"{broken} prediction(s) had non-finite scores (written as null); the model is broken: "
                      f"train it again")
