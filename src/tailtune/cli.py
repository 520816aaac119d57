"""The ``tailtune`` command: thin wrappers over the library.

Every error ends as one line that says what is wrong and how to fix it (exit status 2; 1 for an
unexpected error, 130 when interrupted); ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

from .card import kept_text
from .config import AXIS_NAMES, PRESETS, axes_table, preset_table, preset_train_config
from .loop import TrainConfig
from .cli_args import (HelpFormatter, Parser, add_classifier_args, add_column_args, add_config_args,
                       add_data_args, add_test_prior_arg, classifier_overrides, collect, default_text, output_file)
from .cli_predict import _read, add_loading_args, cmd_evaluate, cmd_predict, count_type, number_list
from .cli_tools import add_tool_parsers
from .stages.lm import AdaptConfig


# ---------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    from .api import TailtuneClassifier
    from .artefacts import read_json, staged_dir, write_classifier, write_json
    from .data import check_labels, class_stats, label_space, read_dataset
    from .metrics import export_weight_norms, format_report
    from .processes import is_main_process, prepare_output_once
    from .cli_predict import test_prior_line
    out = Path(args.output)
    checkpoint = prepare_output_once(out, args.overwrite, args.resume, args.device or "auto")
    train_ds, dev_ds, test_ds = _read(args, args.train), _read(args, args.dev), _read(args, args.test)
    unlabeled = list(read_dataset(args.unlabeled, args.text_col, None).texts) if args.unlabeled else None
    labels = label_space(train_ds.labels)
    for split, ds in (("dev", dev_ds), ("test", test_ds)):
        if ds is not None:
            check_labels(ds, labels, split)
    if args.test_prior == "em":  # refused before training, not after it
        from .errors import ConfigError
        from .priorshift import check_size
        if test_ds is None:
            raise ConfigError("--test-prior em applies to the --test report: give --test FILE")
        check_size(len(test_ds), len(labels))
    verbalizer = read_json(args.verbalizer, "verbalizer file") if args.verbalizer else None
    descriptions = _descriptions(args, labels)
    if descriptions:  # (the labels are checked before the backbone loads)
        from .data import check_descriptions
        check_descriptions(train_ds, descriptions, args.description_copies)
    recipe = preset_train_config(args.preset, **collect(args, [f.name for f in dataclasses.fields(TrainConfig)]))
    clf = TailtuneClassifier(args.preset, args.backbone, verbalizer=verbalizer, train_config=recipe,
                             theta=args.theta, dev_fraction=args.dev_fraction, trust_remote_code=args.trust_remote_code,
                             **classifier_overrides(args))
    stats = class_stats(train_ds.labels, clf.theta)
    print(f"preset {clf.preset}: {PRESETS[clf.preset].description}")
    print("axes: " + ", ".join(f"{a}={getattr(clf.config, a)}" for a in AXIS_NAMES)
          + (f", stages={','.join(clf.config.stages)}" if clf.config.stages else "")
          + "".join(f", {k}={v}" for k, v in clf.config.options.items()))
    print(f"train: {stats['n_examples']} examples, {stats['n_classes']} classes, imbalance ratio "
          f"{stats['imbalance_ratio']:.1f}, {len(stats['head'])} head / {len(stats['tail'])} tail (θ={clf.theta})")
    if clf.config.uses_label_words:  # show the label words before the (long) training starts
        from .backbone import load_tokenizer
        from .inputs import Verbalizer
        for row in Verbalizer(labels, verbalizer, warn_missing=False).describe(load_tokenizer(args.backbone)):
            print(f"  verbalizer {row['label']!r} -> {row['word']!r} -> {row['tokens']}"
                  + ("  (contains an unknown token!)" if row["unknown"] else ""))
    if descriptions:
        print(f"descriptions: {len(descriptions)} of {len(labels)} labels, each {args.description_copies} times "
              f"among the training examples")
    clf.fit(train_ds, dev=dev_ds, checkpoint_dir=checkpoint, resume=args.resume, log=print, unlabeled=unlabeled,
            mlm_weight=args.mlm_weight, descriptions=descriptions, description_copies=args.description_copies)
    r = clf.train_result_
    print(f"{kept_text(f'{r.best_dev_macro_f1:.4f}', r.best_step, r.steps, clf.train_config.select_metric)} "
          f"({r.seconds:.0f} s)"
          if r.best_dev_macro_f1 is not None else f"no dev set: the last step kept ({r.steps}; {r.seconds:.0f} s)")
    report = clf.set_test_prior(args.test_prior).evaluate(test_ds) if test_ds is not None else None
    if args.test_prior == "em":
        print(test_prior_line(clf))
        report["test_prior_estimate"] = clf.test_prior_shares_
    if not is_main_process():  # under `accelerate launch` the main process saves
        return 0
    with staged_dir(out, overwrite=True) as tmp:  # the finished classifier replaces the checkpoint
        write_classifier(clf.model_, tmp, clf.save_metadata(report))
        export_weight_norms(clf.weight_norms(), tmp / "analysis", args.preset)
        if report is not None:
            write_json(tmp / "test_report.json", report)
    print(f"saved to {out}")
    if report is not None:
        print(format_report(report))
    return 0


# ---------------------------------------------------------------- stats / evaluate / predict

def cmd_stats(args: argparse.Namespace) -> int:
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
        print(f"  {c[:30]:<31}{n:>7}  {100 * n / stats['n_examples']:5.1f}%  "
              f"cum {100 * running / stats['n_examples']:5.1f}%  {group}")
    return 0


# ---------------------------------------------------------------- stages, experiments, listings

def cmd_adapt_lm(args: argparse.Namespace) -> int:
    from .stages.lm import adapt_lm
    report = adapt_lm(AdaptConfig(**collect(args, [f.name for f in dataclasses.fields(AdaptConfig)])))
    print(f"masked-token top-1 {report['before']['top1']:.4f} -> {report['after']['top1']:.4f}, "
          f"top-5 {report['before']['top5']:.4f} -> {report['after']['top5']:.4f}; saved to {args.output}")
    return 0


def cmd_pretrain_prompt(args: argparse.Namespace) -> int:
    from .stages.ppt import pretrain_prompt
    pretrain_prompt(args.task, args.data, args.output, args.backbone, args.examples, args.dev_examples,
                    args.soft_tokens, args.max_length,
                    TrainConfig(**collect(args, [f.name for f in dataclasses.fields(TrainConfig)])),
                    template=args.template, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .experiment import load_experiment, run_experiment
    k, _, n = (args.shard or "0/1").partition("/")
    if not (k.isdigit() and n.isdigit()):
        raise ConfigError(f"--shard {args.shard!r}: write K/N, e.g. 0/4")
    cfg = load_experiment(args.config, args.data_dir)
    if args.output_dir:
        cfg["output_dir"] = args.output_dir
    if args.ray and args.shard:
        raise ConfigError("--ray and --shard both split the runs: use one")
    run_experiment(cfg, args.only, shard=(int(k), int(n)), ray=args.ray)
    return 0


def _add_unlabeled_args(u: argparse.ArgumentParser) -> None:
    u.add_argument("--unlabeled", default=None, help="unlabelled texts (.txt, one per line, or a data file's "
                   "--text-col): early exits' self-distillation (--preset fastbert) learns from them too, and a prompt "
                   "classifier adds PET's auxiliary MLM loss on them (--mlm-weight); others refuse them "
                   "(default: none)")
    u.add_argument("--mlm-weight", type=float, default=1e-4, help="PET's auxiliary MLM loss on --unlabeled against "
                   "the task loss (default: 1e-4, PET's)")


def _add_description_args(u: argparse.ArgumentParser) -> None:
    u.add_argument("--descriptions", default=None, help="JSON file: label -> description (a text or a list), added "
                   "to the training examples (after the dev split), e.g. {\"pos\": \"It was great .\"} (default: none)")
    u.add_argument("--description-template", default=None, help="describe the labels without a --descriptions "
                   "entry by their names in this template, e.g. 'This message is about {label} .' (default: none)")
    u.add_argument("--description-copies", type=int, default=4, help="times each description joins the training "
                   "examples (default: 4)")


def _descriptions(args: argparse.Namespace, labels: list[str]) -> dict | None:
    """The --descriptions / --description-template of ``labels`` (None: neither given)."""
    from .zeroshot import read_descriptions
    return read_descriptions(labels, args.descriptions, args.description_template)


def cmd_tune(args: argparse.Namespace) -> int:
    from .cli_tools import run_tune
    return run_tune(args, collect(args, [f.name for f in dataclasses.fields(TrainConfig)]),
                    classifier_overrides(args))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    run_demo(args.output, epochs=args.epochs, preset=args.preset, overwrite=args.overwrite)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.app import ServeConfig, serve
    from .multitask import task_dirs
    cfg = ServeConfig(**collect(args, [f.name for f in dataclasses.fields(ServeConfig)]))
    task_dirs(args.directory)  # refuse a directory without classifiers before starting anything
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not cfg.token:
        warnings.warn(f"serving on {cfg.host} without --token: anyone who reaches this machine can use and change "
                      f"the served tasks")
    serve(args.directory, cfg)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import main_export
    main_export(args.model, args.output, args.opset, args.overwrite)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.markdown:
        print(preset_table())
        return 0
    for name, preset in PRESETS.items():
        print(f"{name:<18} {preset.description}")
    return 0


def cmd_axes(args: argparse.Namespace) -> int:
    if args.markdown:
        print(axes_table())
        return 0
    from .registry import AXES, STAGES
    for axis, registry in (*AXES.items(), ("stages", STAGES)):
        print(f"{axis}: {registry.help}")
        for entry in registry:
            opts = ", ".join(f"{f.name}={default_text(f)}" for f in entry.option_fields())
            print(f"  {entry.name:<15} {entry.description}" + (f"  [{opts}]" if opts else ""))
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tailtune", description="Few-shot and long-tailed text classification with BERT-family "
               "encoders. Add --debug to any command for tracebacks.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a classifier and save it")
    add_data_args(t, [("--train", True), ("--dev", "carved from --train, --dev-fraction"), ("--test", False)])
    t.add_argument("--preset", default="auto", choices=list(PRESETS), help="method (see 'tailtune presets'; default: "
                   "auto, the measured default; its training recipe fills every training option you leave out)")
    t.add_argument("--backbone", default=None, help="Hugging Face name or local path (default: embedded MiniLM)")
    t.add_argument("--verbalizer", default=None, help="JSON file mapping each label to a word or list of words "
                   "(default: each label's readable name, e.g. money-fx -> money fx)")
    t.add_argument("--output", "-o", required=True, help="directory for the saved classifier")
    t.add_argument("--overwrite", action="store_true", help="replace a non-empty --output once training is done "
                   "(default: refuse a non-empty --output before training)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from <output>/checkpoint "
                   "(default: start afresh)")
    t.add_argument("--theta", type=float, default=0.65, help="head/tail threshold θ (default: 0.65)")
    t.add_argument("--dev-fraction", type=float, default=0.1, help="dev share carved from train without --dev "
                   "(default: 0.1)")
    t.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the hub")
    _add_unlabeled_args(t)
    _add_description_args(t)
    add_test_prior_arg(t, "--test (its report only; the saved classifier is the same)")
    add_classifier_args(t)
    add_config_args(t.add_argument_group("training (unset options come from the preset's recipe)"), TrainConfig,
                     recipe=PRESETS["auto"].train)
    t.set_defaults(func=cmd_train)

    def tune_args(u: argparse.ArgumentParser) -> None:  # what `tune` shares with `train`
        add_data_args(u, [("--train", True), ("--dev", True)])
        u.add_argument("--preset", default="auto", choices=list(PRESETS), help="method searched (default: auto)")
        u.add_argument("--backbone", default=None, help="Hugging Face name or local path (default: embedded MiniLM)")
        _add_unlabeled_args(u)
        _add_description_args(u)
        add_classifier_args(u)
        add_config_args(u.add_argument_group("training settings every trial shares (unset: the preset's recipe)"),
                         TrainConfig, recipe=PRESETS["auto"].train)
    add_tool_parsers(sub, tune_args, cmd_tune)

    st = sub.add_parser("stats", help="class counts, imbalance ratio and the head/tail split of a data file")
    add_data_args(st, [("--data", True)])
    st.add_argument("--theta", type=float, default=0.65, help="head/tail threshold θ (default: 0.65)")
    st.add_argument("--json", action="store_true", help="print the statistics as JSON")
    st.set_defaults(func=cmd_stats)

    e = sub.add_parser("evaluate", help="long-tail report of a saved classifier on labelled data")
    e.add_argument("model", help="saved classifier directory")
    add_data_args(e, [("--data", True)], saved=True)
    e.add_argument("--theta", type=float, default=None, help="head/tail threshold (default: the model's)")
    e.add_argument("--groups", default="auto", choices=["auto", "split", "train"], help="head/tail from the class "
                   "counts of --data (split) or of the training data (train); auto: train when --data is near "
                   "balanced (default: auto)")
    e.add_argument("--output", default=None, type=output_file,
                   help="write the report as JSON here (default: printed only)")
    e.add_argument("--exit-curve", type=number_list(float, "numbers"), default=None,
                   help="early exit: print macro-F1, mean layers and speed at these thresholds, e.g. 0.1,0.3,0.6 "
                        "(default: none)")
    e.add_argument("--exit-batch-sizes", type=number_list(int, "whole numbers"), default=[1, 64],
                   help="batch sizes of the --exit-curve timings (default: 1,64)")
    e.add_argument("--exit-repeats", type=count_type, default=1, help="time each --exit-curve point this many "
                   "times and keep the fastest (best of N: steadier speed-ups on a busy machine) (default: 1)")
    add_loading_args(e)
    add_test_prior_arg(e, "--data")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="predict labels for new texts (JSON lines, one per input, with its id)")
    r.add_argument("model", help="saved classifier directory, or a directory of task modules (one per "
                                 "subdirectory, named by it) that then share one backbone")
    r.add_argument("text", nargs="*", help="texts to classify (or use --data)")
    r.add_argument("--task", default=None, help="which task module of the directory predicts (default: its only "
                   "one; a directory of several needs --task or --task-col)")
    r.add_argument("--task-col", default=None, help="with --data: column naming each row's task "
                                                    "(rows of different tasks share batches) (default: none)")
    r.add_argument("--data", default=None, help="file of texts (.tsv, .csv or .jsonl; or .txt, one text per line) "
                   "(default: the texts given as arguments)")
    add_column_args(r, ("text_col", "text_b_col"), saved=True)
    r.add_argument("--id-col", default=None, help="column passed through as each output's id (default: 'id' when "
                   "the file has one, else the row number from 0)")
    r.add_argument("--output", default=None, type=output_file, help="write JSON lines here (default: stdout)")
    r.add_argument("--probabilities", action="store_true", help="add every class's probability to each line, "
                   "{label: p}, as `tailtune serve` answers (default: the predicted label and its score only)")
    add_loading_args(r)
    add_test_prior_arg(r, "the texts given (a single classifier)")
    r.set_defaults(func=cmd_predict)

    x = sub.add_parser("run", help="run an experiment YAML (presets x datasets x seeds), resumable")
    x.add_argument("config", help="experiment YAML file")
    x.add_argument("--data-dir", default=None, help="root of relative data paths (default: $TAILTUNE_DATA, else the "
                   "file's data_dir, else .)")
    x.add_argument("--output-dir", default=None, help="override the file's output_dir (default: the file's)")
    x.add_argument("--only", nargs="*", default=None, help="run only these datasets or presets (default: every run)")
    x.add_argument("--shard", default=None, help="K/N: run every N-th planned run from the K-th (N processes "
                   "sharing a GPU append to one results.jsonl) (default: every run in this process)")
    x.add_argument("--ray", default=None, metavar="ADDRESS", help="send the runs to Ray: auto (the running cluster), "
                   "local (a new local instance) or a cluster address; resources from the file's ray: block "
                   "(default: in this process)")
    x.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="train and evaluate on small built-in demo data with the embedded default")
    d.add_argument("--output", default="tailtune-demo", help="where to save the demo (default: tailtune-demo)")
    d.add_argument("--preset", default="auto", choices=list(PRESETS), help="method (default: auto)")
    d.add_argument("--epochs", type=float, default=None, help="training epochs (default: the preset's recipe)")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output")
    d.set_defaults(func=cmd_demo)

    a = sub.add_parser("adapt-lm", help="continue masked-LM training on unlabelled text; save the adapted backbone")
    a.add_argument("--data", nargs="+", required=True, help="unlabelled text files, one document per line")
    add_config_args(a, AdaptConfig, skip=("data",))
    a.set_defaults(func=cmd_adapt_lm)

    q = sub.add_parser("pretrain-prompt", help="pre-train soft prompt tokens on a self-supervised task (PPT)")
    q.add_argument("--task", required=True, choices=["sentence_pair", "multiple_choice", "single_sentence"])
    q.add_argument("--data", nargs="+", required=True, help="unlabelled text files, one document per line")
    q.add_argument("--output", required=True, help="directory for the pre-trained prompt")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    q.add_argument("--resume", action="store_true", help="continue an interrupted run from <output>/checkpoint")
    q.add_argument("--backbone", default=None, help="backbone (default: the embedded MiniLM)")
    q.add_argument("--examples", type=int, default=3000, help="training examples built from the text (default: 3000)")
    q.add_argument("--dev-examples", type=int, default=300, help="dev examples, from held-out documents "
                   "(default: 300)")
    q.add_argument("--soft-tokens", type=int, default=20, help="prompt length (default: 20)")
    q.add_argument("--max-length", type=int, default=128, help="tokens per example (default: 128)")
    q.add_argument("--template", default=None, help="hard part of the template (default: the task's own; "
                   "e.g. '{text} {mask} .' for vanilla PPT)")
    add_config_args(q.add_argument_group("training"), TrainConfig)
    q.set_defaults(func=cmd_pretrain_prompt)

    v = sub.add_parser("serve", help="serve every classifier in a directory over HTTP (task modules share one backbone)")
    v.add_argument("directory", help="a saved classifier, or a directory of them (one task per subdirectory)")
    from .serve.app import ServeConfig
    add_config_args(v, ServeConfig)
    v.set_defaults(func=cmd_serve)

    o = sub.add_parser("export", help="export a saved classifier to ONNX for ONNX Runtime (tailtune.deploy)")
    o.add_argument("model", help="saved classifier directory")
    o.add_argument("--output", "-o", required=True, help="directory for model.onnx, export.json and the tokenizer")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    o.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    o.set_defaults(func=cmd_export)

    s = sub.add_parser("presets", help="list the named methods")
    s.add_argument("--markdown", action="store_true", help="the README's preset table")
    s.set_defaults(func=cmd_presets)
    ax = sub.add_parser("axes", help="list every entry of every axis, with its options")
    ax.add_argument("--markdown", action="store_true", help="the README's axes table")
    ax.set_defaults(func=cmd_axes)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse a command line; options may come before or after positional texts."""
    parser = build_parser()
    if argv and argv[0] in ("predict", "evaluate"):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
        args = sub.parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    args, extra = parser.parse_known_args(argv)
    if extra:  # the command's own parser names the options it may have meant
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    args = parse(argv)
    command = args.command
    from .cli_errors import run_command
    from .processes import end_processes, is_main_process
    if not is_main_process():  # under `accelerate launch` only the main process prints results
        sys.stdout = open(os.devnull, "w")
    code = 1
    try:
        code = run_command(args, command, debug)
    finally:
        end_processes(finished=code == 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
