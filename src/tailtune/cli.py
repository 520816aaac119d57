"""The ``tailtune`` command: thin wrappers over the library."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from .data import DataError, read_dataset
from .lm import AdaptConfig
from .model import PRESETS, ClassifierConfig
from .prompts import TemplateError
from .train import TrainConfig


def _field_docs(cls) -> dict[str, str]:
    """Field docstrings of a config dataclass, so they double as CLI help."""
    import inspect
    tree = ast.parse(inspect.getsource(cls))
    docs, last = {}, None
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) and last:
            docs[last] = node.value.value
            last = None
    return docs


def _add_config_args(p, cls, skip=()):
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool) or f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=docs.get(f.name))
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=None, help=docs.get(f.name))


def _collect(args, cls, skip=()) -> dict:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and getattr(args, f.name, None) is not None}


def _add_data_args(p, split_flags):
    for flag, required in split_flags:
        p.add_argument(flag, required=required, help=f"{flag[2:]} file (.tsv, .csv or .jsonl)")
    p.add_argument("--text-col", default="text", help="column holding the text")
    p.add_argument("--text-b-col", default=None, help="column holding a second text (e.g. entity)")
    p.add_argument("--label-col", default="label", help="column holding the label")


def _add_loading_args(p):
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--backbone", default=None, help="base backbone for a saved task module (default: its own)")


def _read(args, path):
    return read_dataset(path, args.text_col, args.label_col, args.text_b_col) if path else None


def _print_setup(clf, train_ds):
    from .data import class_stats
    stats = class_stats(train_ds.labels, clf.theta)
    print(f"preset {clf.preset}: {PRESETS[clf.preset][1] if clf.preset in PRESETS else ''}")
    print(f"train: {stats['n_examples']} examples, {stats['n_classes']} classes, imbalance ratio "
          f"{stats['imbalance_ratio']:.1f}, {len(stats['head'])} head / {len(stats['tail'])} tail (θ={clf.theta})")


def cmd_train(args) -> int:
    from .api import TailtuneClassifier
    from .metrics import export_weight_norms, format_report
    train_ds, dev_ds, test_ds = _read(args, args.train), _read(args, args.dev), _read(args, args.test)
    verbalizer = json.loads(Path(args.verbalizer).read_text()) if args.verbalizer else None
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise DataError(f"{out} exists and is not empty; choose another --output or pass --overwrite")
    clf = TailtuneClassifier(args.preset, args.backbone, verbalizer=verbalizer,
                             train_config=TrainConfig(**_collect(args, TrainConfig)), theta=args.theta,
                             dev_fraction=args.dev_fraction, trust_remote_code=args.trust_remote_code,
                             **_collect(args, ClassifierConfig))
    _print_setup(clf, train_ds)
    if clf.config.head == "verbalizer":  # show the label words before the (long) training starts
        from .backbone import load_tokenizer
        from .data import label_space
        from .prompts import Verbalizer
        verb = Verbalizer(label_space(train_ds.labels), verbalizer)
        for row in verb.describe(load_tokenizer(args.backbone)):
            print(f"  verbalizer {row['label']!r} -> {row['word']!r} -> {row['tokens']}"
                  + ("  (contains an unknown token!)" if row["unknown"] else ""))
    clf.fit(train_ds, dev=dev_ds)
    c = clf.model_.parameter_counts()
    print(f"trainable parameters: {c['trainable']:,} ({c['pct_of_backbone']:.3f}% of the backbone; "
          f"{c['pct_of_backbone_without_head']:.3f}% without the head)")
    print(f"best dev macro-F1 {clf.train_result_.best_dev_macro_f1} at step {clf.train_result_.best_step}")
    clf.save(out)
    export_weight_norms(clf.weight_norms(), out / "analysis", f"{args.preset}")
    print(f"saved to {out}")
    if test_ds is not None:
        report = clf.evaluate(test_ds)
        (out / "test_report.json").write_text(json.dumps(report, indent=2))
        print(format_report(report))
    return 0


def cmd_stats(args) -> int:
    from .data import class_stats
    stats = class_stats(_read(args, args.data).labels, args.theta)
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return 0
    print(f"{stats['n_examples']} examples, {stats['n_classes']} classes, imbalance ratio "
          f"{stats['imbalance_ratio']:.1f} (largest / smallest class), θ={args.theta}: "
          f"{len(stats['head'])} head, {len(stats['tail'])} tail")
    running = 0
    for c, n in stats["counts"].items():
        running += n
        group = "head" if c in stats["head"] else "tail"
        print(f"  {c[:30]:<31}{n:>7}  {100 * n / stats['n_examples']:5.1f}%  cum {100 * running / stats['n_examples']:5.1f}%  {group}")
    return 0


def cmd_evaluate(args) -> int:
    from .api import TailtuneClassifier
    from .metrics import format_report
    clf = TailtuneClassifier.load(args.model, args.device, args.backbone)
    report = clf.evaluate(_read(args, args.data), args.theta)
    print(format_report(report))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return 0


def cmd_predict(args) -> int:
    from .multitask import task_dirs
    if args.data:  # the task column, when named, is read where labels would be
        ds = read_dataset(args.data, args.text_col, args.task_col, args.text_b_col)
        texts, texts_b, row_tasks = ds.texts, ds.texts_b, (ds.labels if args.task_col else None)
    else:
        texts, texts_b, row_tasks = list(args.text), None, None
    dirs = task_dirs(args.model)
    if (Path(args.model) / "tailtune.json").is_file() and not row_tasks:
        return _predict_one(args, texts, texts_b)
    tasks = row_tasks or ([args.task] * len(texts) if args.task else None)
    if tasks is None:
        if len(dirs) > 1:
            raise ValueError(f"{args.model} holds tasks {', '.join(dirs)}: pick one with --task NAME, or "
                             f"name a task per row with --data FILE --task-col COLUMN")
        tasks = list(dirs) * len(texts)
    return _predict_tasks(args, dirs, texts, texts_b, tasks)


def _predict_one(args, texts, texts_b) -> int:
    from .api import TailtuneClassifier
    clf = TailtuneClassifier.load(args.model, args.device, args.backbone)
    _write_predictions(args, texts, None, clf.predict_proba(texts, texts_b), lambda i: clf.labels_)
    return 0


def _predict_tasks(args, dirs, texts, texts_b, tasks) -> int:
    """Several task modules on one backbone; batches mix tasks."""
    from .multitask import TaskSet
    from .train import resolve_device
    unknown = sorted(set(tasks) - set(dirs))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in {args.model}; it holds: {', '.join(dirs)}")
    task_set = TaskSet(args.backbone, str(resolve_device(args.device)))
    for name in dict.fromkeys(tasks):
        task_set.add(dirs[name], name)
    probs = [s.softmax(-1).numpy() for s in task_set.logits(texts, tasks, texts_b)]
    _write_predictions(args, texts, tasks, probs, lambda i: task_set.tasks[tasks[i]].labels)
    return 0


def _write_predictions(args, texts, tasks, probs, labels_of) -> None:
    out = open(args.output, "w") if args.output else sys.stdout
    for i, (text, p) in enumerate(zip(texts, probs)):
        best = int(p.argmax())
        row = {"text": text, **({"task": tasks[i]} if tasks else {}), "label": labels_of(i)[best],
               "score": round(float(p[best]), 6)}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def cmd_adapt_lm(args) -> int:
    from .lm import adapt_lm
    report = adapt_lm(AdaptConfig(**_collect(args, AdaptConfig)))
    print(f"masked-token top-1 {report['before']['top1']:.4f} -> {report['after']['top1']:.4f}, "
          f"top-5 {report['before']['top5']:.4f} -> {report['after']['top5']:.4f}; saved to {args.output}")
    return 0


def cmd_pretrain_prompt(args) -> int:
    from .ppt import pretrain_prompt
    pretrain_prompt(args.task, args.data, args.output, args.backbone, args.examples, args.dev_examples,
                    args.soft_tokens, args.max_length, TrainConfig(**_collect(args, TrainConfig)),
                    template=args.template)
    return 0


def cmd_run(args) -> int:
    from .experiment import load_experiment, run_experiment
    cfg = load_experiment(args.config, args.data_dir)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    k, _, n = (args.shard or "0/1").partition("/")
    if not (k.isdigit() and n.isdigit()):
        raise ValueError(f"--shard {args.shard!r}: write K/N, e.g. 0/4")
    run_experiment(cfg, args.only, shard=(int(k), int(n)))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.output, epochs=args.epochs, preset=args.preset)
    return 0


def cmd_presets(args) -> int:
    for name, (axes, desc) in PRESETS.items():
        print(f"{name:<16} {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tailtune", description="Few-shot and long-tailed text classification "
                                "with BERT-family encoders.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a classifier and save it")
    _add_data_args(t, [("--train", True), ("--dev", False), ("--test", False)])
    t.add_argument("--preset", default="cls", choices=list(PRESETS), help="method (see 'tailtune presets')")
    t.add_argument("--backbone", default=None, help="Hugging Face name or local path (default: embedded MiniLM)")
    t.add_argument("--verbalizer", default=None, help="JSON file mapping each label to a word or list of words")
    t.add_argument("--output", "-o", required=True, help="directory for the saved classifier")
    t.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --output")
    t.add_argument("--theta", type=float, default=0.65, help="head/tail threshold θ")
    t.add_argument("--dev-fraction", type=float, default=0.1, help="dev share carved from train without --dev")
    t.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the hub")
    _add_config_args(t, ClassifierConfig)
    _add_config_args(t, TrainConfig)
    t.set_defaults(func=cmd_train)

    st = sub.add_parser("stats", help="class counts, imbalance ratio and the head/tail split of a data file")
    _add_data_args(st, [("--data", True)])
    st.add_argument("--theta", type=float, default=0.65, help="head/tail threshold θ")
    st.add_argument("--json", action="store_true", help="print the statistics as JSON")
    st.set_defaults(func=cmd_stats)

    e = sub.add_parser("evaluate", help="long-tail report of a saved classifier on labelled data")
    e.add_argument("model", help="saved classifier directory")
    _add_data_args(e, [("--data", True)])
    e.add_argument("--theta", type=float, default=None, help="head/tail threshold (default: the model's)")
    e.add_argument("--output", default=None, help="write the report as JSON here")
    _add_loading_args(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="predict labels for new texts (JSON lines)")
    r.add_argument("model", help="saved classifier directory, or a directory of task modules (one per "
                                 "subdirectory, named by it) that then share one backbone")
    r.add_argument("text", nargs="*", help="texts to classify (or use --data)")
    r.add_argument("--task", default=None, help="which task module of the directory predicts")
    r.add_argument("--task-col", default=None, help="with --data: column naming each row's task "
                                                    "(rows of different tasks share batches)")
    r.add_argument("--data", default=None, help="file of texts (.tsv, .csv or .jsonl)")
    r.add_argument("--text-col", default="text")
    r.add_argument("--text-b-col", default=None)
    r.add_argument("--output", default=None, help="write JSON lines here (default: stdout)")
    _add_loading_args(r)
    r.set_defaults(func=cmd_predict)

    x = sub.add_parser("run", help="run an experiment YAML (presets x datasets x seeds), resumable")
    x.add_argument("config", help="experiment YAML file")
    x.add_argument("--data-dir", default=None, help="root of relative data paths (or $TAILTUNE_DATA)")
    x.add_argument("--output-dir", default=None, help="override the file's output_dir")
    x.add_argument("--only", nargs="*", default=None, help="run only these datasets or presets")
    x.add_argument("--shard", default=None, help="K/N: run every N-th planned run from the K-th (N processes "
                   "sharing a GPU append to one results.jsonl)")
    x.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="train and evaluate on small built-in demo data with the embedded default")
    d.add_argument("--output", default="tailtune-demo", help="where to save the demo classifier")
    d.add_argument("--preset", default="cls", choices=list(PRESETS))
    d.add_argument("--epochs", type=float, default=4)
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("adapt-lm", help="continue masked-LM training on unlabelled text; save the adapted backbone")
    a.add_argument("--data", nargs="+", required=True, help="unlabelled text files, one document per line")
    _add_config_args(a, AdaptConfig, skip=("data",))
    a.set_defaults(func=cmd_adapt_lm)

    q = sub.add_parser("pretrain-prompt", help="pre-train soft prompt tokens on a self-supervised task (PPT)")
    q.add_argument("--task", required=True, choices=["sentence_pair", "multiple_choice", "single_sentence"])
    q.add_argument("--data", nargs="+", required=True, help="unlabelled text files, one document per line")
    q.add_argument("--output", required=True, help="directory for the pre-trained prompt")
    q.add_argument("--backbone", default=None, help="backbone (default: the embedded MiniLM)")
    q.add_argument("--examples", type=int, default=3000, help="training examples built from the text")
    q.add_argument("--dev-examples", type=int, default=300, help="dev examples (another seed)")
    q.add_argument("--soft-tokens", type=int, default=20, help="prompt length")
    q.add_argument("--max-length", type=int, default=128, help="tokens per example")
    q.add_argument("--template", default=None, help="hard part of the template (default: the task's own; "
                   "e.g. '{text} {mask} .' for vanilla PPT)")
    _add_config_args(q, TrainConfig)
    q.set_defaults(func=cmd_pretrain_prompt)

    s = sub.add_parser("presets", help="list the named methods")
    s.set_defaults(func=cmd_presets)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "predict" and not args.text and not args.data:
        print("tailtune predict: give texts or --data FILE", file=sys.stderr)
        return 2
    warnings.simplefilter("default", UserWarning)
    try:
        return args.func(args)
    except (DataError, TemplateError, ValueError, FileNotFoundError) as e:
        print(f"tailtune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `tailtune stats ... | head`
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
