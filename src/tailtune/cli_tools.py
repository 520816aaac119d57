"""The ``tune``, ``report``, ``push``, ``zero-shot``, ``label-words`` and ``templates`` commands: hyper-parameter
search on dev macro-F1 (Optuna), the HTML report of an experiment, upload of a saved classifier to the Hugging Face
Hub, zero-shot classification, and LM-BFF-style searches for label words and templates."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable

from .cli_args import output_file


def _search_data_args(p: argparse.ArgumentParser) -> None:
    """The data and backbone flags that label-words, templates and pet share."""
    p.add_argument("--train", required=True, help="labelled training texts (.tsv, .csv, .jsonl; or hf:NAME:SPLIT)")
    p.add_argument("--dev", required=True, help="labelled dev texts that rank the candidates")
    p.add_argument("--text-col", default="text", help="column holding the text (default: text)")
    p.add_argument("--label-col", default="label", help="column holding the label (default: label)")
    p.add_argument("--backbone", default=None, help="an MLM backbone: Hugging Face name or local path "
                   "(default: the embedded MiniLM, which ships without an MLM head)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (default: 128)")


def add_tool_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None],
                     func: Callable[[argparse.Namespace], int]) -> None:
    """``tune`` (its data, classifier and training flags from ``add_common``; run by ``func``), ``report``, ``push``."""
    u = sub.add_parser("tune", help="search learning rates, epochs, head and loss options on dev macro-F1 (Optuna); "
                       "writes the best configuration as experiment YAML")
    u.add_argument("--search", nargs="+", required=True, metavar="NAME=SPEC",
                   help="the space: lr=1e-5:1e-3:log (float range), epochs=2:10 (int range), head=mlp,cosine (choice); "
                        "a name is a training setting, an axis or an entry's option")
    u.add_argument("--trials", type=int, default=20, help="trials at most (a grid of choices: all of it; default: 20)")
    u.add_argument("--no-prune", dest="prune", action="store_false", help="never stop a trial early (default: "
                   "Optuna's median pruner on dev macro-F1 at each evaluation)")
    u.add_argument("--output", "-o", default="tuned.yaml", type=output_file,
                   help="the best configuration (default: tuned.yaml)")
    u.add_argument("--name", default="tuned", help="its name under presets: (default: tuned)")
    u.add_argument("--trials-json", default=None, help="also write every trial as JSON here (default: not written)")
    u.add_argument("--ray", default=None, metavar="local|auto|ADDRESS", help="run the trials on Ray Tune (a local "
                   "instance, a running cluster, or its address) instead of in this process (default: in this process)")
    add_common(u)
    u.set_defaults(func=func)
    r = sub.add_parser("report", help="one self-contained HTML report of an experiment's results directory")
    r.add_argument("results_dir", help="the output_dir of `tailtune run` (holds results.jsonl and runs/)")
    r.add_argument("--output", default=None, type=output_file, help="the HTML file (default: RESULTS_DIR/report.html)")
    r.add_argument("--curves", nargs="*", default=None, help="speed / quality curve JSON files to include "
                   "(benchmarks/serving/early_exit.py writes one) (default: none)")
    r.set_defaults(func=cmd_report)
    z = sub.add_parser("zero-shot", help="classify with no training: label descriptions vs texts (any encoder) or "
                       "a template + MLM head with contextual calibration; the long-tail report of evaluate")
    z.add_argument("--data", required=True, help="labelled texts to evaluate (.tsv, .csv, .jsonl; or hf:NAME:SPLIT)")
    z.add_argument("--text-col", default="text", help="column holding the text (default: text)")
    z.add_argument("--label-col", default="label", help="column holding the label (default: label)")
    z.add_argument("--labels", default=None, help="comma-separated labels (default: those of --data)")
    z.add_argument("--method", default="auto", choices=["auto", "prompt", "embedding"],
                   help="prompt needs an MLM head; auto: prompt when the backbone has one, else embedding")
    z.add_argument("--descriptions", default=None, help="JSON file: label -> description (embedding method) (default: "
                   "--description-template for every label)")
    z.add_argument("--description-template", default="{label}", help="description of a label without one, e.g. "
                   "'This text is about {label}.' (default: the label's words)")
    z.add_argument("--template", default=None, help="prompt method: template with {text} and {mask} "
                   "(default: the prompt preset's)")
    z.add_argument("--verbalizer", default=None, help="prompt method: JSON file, label -> word(s) (default: the "
                   "label's words)")
    z.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="contextual calibration with content-free inputs (default: on for the prompt method, off "
                   "for the embedding method, where it measured worse)")
    z.add_argument("--backbone", default=None, help="Hugging Face name or local path (default: embedded MiniLM)")
    z.add_argument("--max-length", type=int, default=128, help="tokens per text (default: 128)")
    z.add_argument("--theta", type=float, default=0.65, help="head/tail threshold θ (default: 0.65)")
    z.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    z.add_argument("--output", default=None, type=output_file,
                   help="write the report as JSON here (default: printed only)")
    z.set_defaults(func=cmd_zero_shot)
    w = sub.add_parser("label-words", help="search label words on an MLM backbone (LM-BFF): candidates from the "
                       "MLM at [MASK] per class, assignment by zero-shot dev accuracy; writes a verbalizer JSON")
    _search_data_args(w)
    w.add_argument("--template", default=None, help="template with {text} and {mask} (default: the prompt preset's)")
    w.add_argument("--top-k", type=int, default=10, help="candidate words per class (default: 10)")
    w.add_argument("--rank", choices=["contrast", "likelihood"], default="contrast",
                   help="candidate ranking: contrast (the class's mean log-probability at [MASK] minus all classes' "
                   "mean, so generic words do not crowd out telling ones) or likelihood (LM-BFF's, the class's "
                   "alone) (default: contrast)")
    w.add_argument("--output", "-o", default="verbalizer.json", type=output_file,
                   help="the verbalizer JSON (default: verbalizer.json)")
    w.set_defaults(func=cmd_label_words)
    m = sub.add_parser("templates", help="search prompt templates on an MLM backbone: a written bank plus templates "
                       "whose connecting words the MLM fills in, ranked by zero-shot dev accuracy")
    _search_data_args(m)
    m.add_argument("--verbalizer", default=None, help="JSON file: label -> word(s) (default: readable label names; "
                   "tailtune label-words finds some)")
    m.add_argument("--no-generate", dest="generate", action="store_false", help="rank the bank only (no MLM-filled "
                   "templates)")
    m.add_argument("--output", "-o", default="templates.json", type=output_file,
                   help="the ranking as JSON (default: templates.json)")
    m.set_defaults(func=cmd_templates)
    e = sub.add_parser("pet", help="PET / iPET: one prompt model per pattern, their weighted ensemble labels "
                       "unlabelled texts, a final classifier distils it (KL, T=2); saves the final classifier")
    _search_data_args(e)
    e.add_argument("--unlabeled", required=True, help="unlabelled texts: a .txt file (one per line) or a data file "
                   "with --text-col")
    e.add_argument("--pattern", action="append", required=True, metavar="TEMPLATE",
                   help="a template with {text} and {mask}; repeat for several patterns")
    e.add_argument("--verbalizer", action="append", default=None, metavar="JSON",
                   help="label -> word(s): one for every pattern, or one per --pattern in order (default: label names)")
    e.add_argument("--generations", type=int, default=0, help="iPET generations (default: 0, plain PET)")
    e.add_argument("--generation-budget", default="steps",
                   help="how long each iPET generation's models train: 'steps', the optimisation steps of generation "
                   "0 (PET's reference), or 'epochs', the same epochs over the grown set (5x and 25x the labelled "
                   "set, so 5x and 25x the steps) (default: steps)")
    e.add_argument("--pattern-weights", default="zero-shot", choices=("zero-shot", "uniform"),
                   help="how the pattern models' scores are combined: 'zero-shot', each weighted by its pattern's "
                   "dev accuracy before training (PET's weighted mean), or 'uniform' (PET's plain mean; near-chance "
                   "zero-shot accuracies, e.g. with many classes, weigh by noise) (default: zero-shot)")
    e.add_argument("--mlm-weight", type=float, default=0.0,
                   help="PET's auxiliary masked-LM loss on the unlabelled texts, weighted against the task loss "
                   "(PET: 1e-4; default: 0, off)")
    e.add_argument("--preset", default="prompt", help="each pattern's model (default: prompt)")
    e.add_argument("--final-preset", default="auto", help="the distilled classifier (default: auto)")
    e.add_argument("--final-backbone", default=None, help="the distilled classifier's backbone, which needs no MLM "
                   "head: 'default' is the embedded MiniLM (default: --backbone)")
    e.add_argument("--epochs", type=float, default=None, help="epochs of each pattern's model (default: the preset's)")
    e.add_argument("--output", required=True, help="directory of the final classifier (pet.json beside it)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    e.set_defaults(func=cmd_pet)
    q = sub.add_parser("multitask-prompt", help="train one MLM backbone on several labelled tasks cast as prompts "
                       "(FLAN/T0-style, for zero-shot transfer); saves a masked-LM checkpoint")
    q.add_argument("spec", help="YAML: tasks: [{name, train, templates: [...], verbalizer: {label: word}, text_col, "
                   "label_col, header, columns}], optional backbone, max_length, max_per_task")
    q.add_argument("--output", required=True, help="directory of the trained masked-LM checkpoint")
    q.add_argument("--backbone", default=None, help="MLM backbone (default: the spec's, else the embedded default)")
    q.add_argument("--epochs", type=float, default=1.0, help="passes over the mixed tasks (default: 1)")
    q.add_argument("--lr", type=float, default=2e-5, help="learning rate (default: 2e-5)")
    q.add_argument("--batch-size", type=int, default=16, help="examples per step (default: 16)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    q.set_defaults(func=cmd_multitask_prompt)
    h = sub.add_parser("push", help="upload a saved classifier (weights, config, tokenizer, model card) to the "
                       "Hugging Face Hub")
    h.add_argument("model", help="saved classifier directory")
    h.add_argument("repo_id", help="the Hub model repo, owner/name (created if missing)")
    h.add_argument("--private", action="store_true", help="create the repo private")
    h.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or your `hf auth login`)")
    h.add_argument("--dry-run", action="store_true", help="print what would be uploaded; upload nothing")
    h.set_defaults(func=cmd_push)


def run_tune(args: argparse.Namespace, base: dict, overrides: dict) -> int:
    """``base``: the training settings given on the command line; ``overrides``: axes and options."""
    from .artefacts import atomic_write_text
    from .cli_predict import _read
    from .data import read_dataset
    from .hparams import parse_dimension, search, write_best
    space = [parse_dimension(text) for text in args.search]
    train, dev = _read(args, args.train), _read(args, args.dev)
    unlabeled = list(read_dataset(args.unlabeled, args.text_col, None).texts) if args.unlabeled else None
    from .data import label_space
    from .zeroshot import read_descriptions
    descriptions = read_descriptions(label_space(train.labels), args.descriptions, args.description_template)
    base = dict(base)
    result = search(train, dev, space, args.preset, args.backbone, args.trials, base.pop("seed", 0), base,
                    overrides, args.prune, ray=args.ray, unlabeled=unlabeled, mlm_weight=args.mlm_weight,
                    descriptions=descriptions, description_copies=args.description_copies)
    path = write_best(result, args.output, args.name)
    if args.trials_json:
        atomic_write_text(args.trials_json, json.dumps(result, indent=2, default=str) + "\n")
    print(f"best dev macro-F1 {result['best_value']:.4f} with {result['best_params']}; written to {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    print(f"report written to {write_report(args.results_dir, args.output, args.curves)}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub
    plan = push_to_hub(args.model, args.repo_id, args.private, args.token, args.dry_run)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(plan['files'])} files ({plan['bytes'] / 1e6:.1f} MB) to {plan['repo_id']}: "
          + ", ".join(plan["files"]) + (f"\n{plan['url']}" if "url" in plan else ""))
    return 0


def cmd_zero_shot(args: argparse.Namespace) -> int:
    from .artefacts import read_json, write_json
    from .data import label_space, read_dataset
    from .metrics import format_report
    from .zeroshot import ZeroShotClassifier
    data = read_dataset(args.data, args.text_col, args.label_col)
    labels = [y.strip() for y in args.labels.split(",") if y.strip()] if args.labels else label_space(data.labels)
    clf = ZeroShotClassifier(labels, args.backbone, args.method,
                             read_json(args.descriptions, "descriptions file") if args.descriptions else None,
                             args.description_template, args.template,
                             read_json(args.verbalizer, "verbalizer file") if args.verbalizer else None,
                             args.calibrate, args.max_length, device=args.device)
    report = clf.evaluate(data, args.theta)
    print(f"zero-shot, method {clf.method_}" + (", calibrated" if report["calibrated"] else ""))
    print(format_report(report))
    if args.output:
        write_json(args.output, report)
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from .artefacts import read_json, write_json
    from .data import read_dataset
    from .templates import search_templates
    train = read_dataset(args.train, args.text_col, args.label_col)
    dev = read_dataset(args.dev, args.text_col, args.label_col)
    words = read_json(args.verbalizer, "verbalizer") if args.verbalizer else None
    found = search_templates(train, dev, args.backbone, words, generate=args.generate, max_length=args.max_length)
    for r in found["ranking"][:10]:
        print(f"{r['dev_accuracy']:.4f}  {r['source']:<4}  {r['template']}")
    print(f"best: {found['template']!r} (zero-shot dev accuracy {found['dev_accuracy']:.4f}); ranking written to "
          f"{args.output} (use it: tailtune train --preset prompt --template {json.dumps(found['template'])})")
    write_json(args.output, found)
    return 0


def cmd_pet(args: argparse.Namespace) -> int:
    from pathlib import Path
    from .artefacts import check_writable, read_json, write_json
    from .config import preset_train_config
    from .data import read_dataset
    from .errors import ConfigError
    from .pet import Pattern, run_pet
    check_writable(Path(args.output), args.overwrite)  # before any training
    train = read_dataset(args.train, args.text_col, args.label_col)
    dev = read_dataset(args.dev, args.text_col, args.label_col)
    unlabeled = list(read_dataset(args.unlabeled, args.text_col, None).texts)
    words = [read_json(v, "verbalizer") for v in args.verbalizer or []]
    if len(words) not in (0, 1, len(args.pattern)):
        raise ConfigError(f"give one --verbalizer for all patterns or one per --pattern ({len(args.pattern)}), "
                          f"not {len(words)}")
    patterns = [Pattern(t, words[k] if len(words) > 1 else (words[0] if words else None))
                for k, t in enumerate(args.pattern)]
    member_cfg = preset_train_config(args.preset, **({"epochs": args.epochs} if args.epochs else {}))
    found = run_pet(train, dev, unlabeled, patterns, args.backbone, preset=args.preset, train_config=member_cfg,
                    final_preset=args.final_preset, final_backbone=args.final_backbone, max_length=args.max_length,
                    generations=args.generations, mlm_weight=args.mlm_weight,
                    generation_budget=args.generation_budget, pattern_weights=args.pattern_weights)
    found["classifier"].save(args.output, overwrite=args.overwrite)
    summary = {k: v for k, v in found.items() if k != "classifier"}
    write_json(Path(args.output) / "pet.json", summary)
    for p in summary["patterns"]:
        print(f"pattern {p['template']!r}: weight {p['weight']:.3f}, dev accuracy {p['dev_accuracy']:.4f}")
    print(f"ensemble dev accuracy {summary['ensemble_dev_accuracy']:.4f}; final classifier saved to {args.output}")
    return 0


def cmd_multitask_prompt(args: argparse.Namespace) -> int:
    from pathlib import Path
    import yaml
    from .data import read_dataset
    from .errors import ConfigError
    from .loop import TrainConfig
    from .multiprompt import PromptTask, train_multitask_prompt
    spec_path = Path(args.spec)
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {spec_path}: {err}") from None
    rows = spec.get("tasks") if isinstance(spec, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"name", "train", "templates"} <= set(r)
                                             for r in rows):
        raise ConfigError(f"{spec_path}: needs tasks: a list of {{name, train, templates, verbalizer}} entries")
    tasks = []
    for r in rows:
        kw = {k: r[k] for k in ("header", "columns") if k in r}
        data = read_dataset(spec_path.parent / r["train"], r.get("text_col", "text"), r.get("label_col", "label"), **kw)
        templates = [r["templates"]] if isinstance(r["templates"], str) else list(r["templates"])
        tasks.append(PromptTask(str(r["name"]), data, templates, r.get("verbalizer")))
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    summary = train_multitask_prompt(tasks, args.backbone or spec.get("backbone"), args.output, cfg,
                                     max_length=int(spec.get("max_length", 128)),
                                     max_per_task=int(spec.get("max_per_task", 2000)), overwrite=args.overwrite)
    for t in summary["tasks"]:
        print(f"{t['name']}: {t['examples']} examples, {len(t['templates'])} template(s), training accuracy "
              f"{t['train_accuracy']:.4f}")
    return 0


def cmd_label_words(args: argparse.Namespace) -> int:
    from .artefacts import write_json
    from .data import read_dataset
    from .labelwords import search_label_words
    train = read_dataset(args.train, args.text_col, args.label_col)
    dev = read_dataset(args.dev, args.text_col, args.label_col)
    found = search_label_words(train, dev, args.backbone, args.template, args.top_k, max_length=args.max_length,
                               rank=args.rank)
    for label, word in found["verbalizer"].items():
        print(f"{label!r} -> {word!r}   (candidates: {', '.join(found['candidates'][label])})")
    print(f"zero-shot dev accuracy {found['dev_accuracy']:.4f}; written to {args.output} "
          f"(use it: tailtune train --preset prompt --verbalizer {args.output})")
    write_json(args.output, found["verbalizer"])
    return 0
