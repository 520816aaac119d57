"""How the ``tailtune`` command declares its options: flags from the configuration dataclasses (their field
docstrings are the help), the classifier axes from the registries, the shared data flags, and a help formatter
that makes every option say its default."""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from .config import AXIS_NAMES, PRESETS, ClassifierConfig, all_options
from .registry import field_docs

_TYPES: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}


def _type_name(annotation: Any) -> str:
    """``int``, ``"int"`` and ``int | None`` as text (dataclasses of modules without postponed annotations
    hold the types themselves)."""
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _parse_type(annotation: Any) -> Callable[[str], Any]:
    """argparse type of a dataclass field annotation such as ``int | None`` ("none" gives None)."""
    parts = [p.strip() for p in _type_name(annotation).split("|")]
    base = _TYPES.get(next((p for p in parts if p != "None"), "str"), str)
    if "None" not in parts:
        return base

    def optional(text: str) -> Any:
        return None if text.lower() == "none" else base(text)
    optional.__name__ = base.__name__
    return optional


def default_text(f: dataclasses.Field) -> str:
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return "none" if value is None else str(value)


def add_field(p: argparse.ArgumentParser, f: dataclasses.Field, doc: str | None, prefix: str = "",
               recipe: dict | None = None) -> None:
    flag = "--" + f.name.replace("_", "-")
    default = default_text(f)
    if recipe and f.name in recipe:
        default = f"{recipe[f.name]} in the auto preset's recipe, else {default}"
    text = f"{prefix}{doc or ''} (default: {default})"
    if _type_name(f.type) == "bool":
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    else:
        p.add_argument(flag, type=_parse_type(f.type), default=None, help=text, metavar=f.name.upper())


def add_config_args(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                     recipe: dict | None = None) -> None:
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            add_field(p, f, docs.get(f.name), recipe=recipe)


def add_classifier_args(p: argparse.ArgumentParser) -> None:
    """Flags for the axes (choices from the registries) and for every option of every entry."""
    from .registry import AXES, STAGES
    docs = field_docs(ClassifierConfig)
    g = p.add_argument_group("classifier axes (override the preset; `tailtune axes` lists every entry)")
    for axis in AXIS_NAMES:
        flags = ["--" + axis.replace("_", "-")] + (["--loss"] if axis == "objective" else [])
        auto = PRESETS["auto"].values.get(axis, getattr(ClassifierConfig, axis))
        g.add_argument(*flags, dest=axis, default=None, choices=AXES[axis].names(),
                       help=f"{docs.get(axis)} (default: the preset's; auto's: {auto})")
    auto_stages = ",".join(PRESETS["auto"].values.get("stages", ())) or "none"
    g.add_argument("--stages", type=lambda text: [s.strip() for s in text.split(",") if s.strip() not in ("", "none")],
                   default=None,
                   help=f"{docs['stages']}: comma-separated, of {', '.join(STAGES.names())}; none: just fine-tune "
                        f"(default: the preset's; auto's: {auto_stages})")
    g.add_argument("--max-length", type=int, default=None, help=f"{docs['max_length']} (default: the preset's, 128)")
    o = p.add_argument_group("options of the axis entries (each only with its entry)")
    for name, entries in all_options().items():
        entry = entries[0]
        f = next(f for f in entry.option_fields() if f.name == name)
        owners = " or ".join(f"{e.axis}={e.name}" for e in entries)
        add_field(o, f, entry.option_docs().get(name), prefix=f"[{owners}] ", recipe=PRESETS["auto"].values)


def collect(args: argparse.Namespace, names: Any) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def classifier_overrides(args: argparse.Namespace) -> dict:
    return collect(args, [*AXIS_NAMES, "stages", "max_length", *all_options()])


COLUMNS = {"text_col": "text", "text_b_col": None, "label_col": "label"}
"""The data columns and their defaults; a classifier fitted on a file saves the ones it was read from
(``TextDataset.column_names``)."""


def add_data_args(p: argparse.ArgumentParser, split_flags: list[tuple[str, bool | str]],
                  saved: bool = False) -> None:
    """``split_flags``: (flag, True) for a required file, (flag, False) for an optional one, or (flag, what happens
    without it) for an optional one with a default worth saying. ``saved``: a column flag left out means the
    column the classifier was trained from (``fill_columns``)."""
    for flag, required in split_flags:
        default = "" if required is True else f" (default: {required or 'none'})"  # HelpFormatter says required
        p.add_argument(flag, required=required is True, help=f"{flag[2:]} file (.tsv, .csv or .jsonl){default}")
    add_column_args(p, tuple(COLUMNS), saved)


def add_column_args(p: argparse.ArgumentParser, names: tuple[str, ...], saved: bool = False) -> None:
    """``--text-col``, ``--text-b-col``, ``--label-col`` (those of ``names``); ``saved`` as in ``add_data_args``."""
    what_of = {"text_col": "the text", "text_b_col": "a second text, e.g. an entity", "label_col": "the label"}
    for name in names:
        what, default = what_of[name], COLUMNS[name] or "none"
        if saved and name == "text_b_col":
            what += " ('none': no second text)"
        said = f"the column the classifier was trained from, else {default}" if saved else default
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, default=None if saved else COLUMNS[name], help=f"column holding {what} (default: {said})")


def fill_columns(args: argparse.Namespace, model: str) -> None:
    """The column flags left out become the columns the classifier at ``model`` was trained from (for a directory
    of task modules, the columns they all share), else the usual defaults; ``--text-b-col none`` reads no second
    text."""
    from .artefacts import read_json
    from .errors import TailtuneError
    from .multitask import task_dirs
    try:
        metas = [read_json(d / "tailtune.json") for d in task_dirs(model).values()]
        saved = [(m.get("columns") if isinstance(m, dict) else None) or {} for m in metas]
    except TailtuneError:  # not a local classifier (a Hub name, or a wrong path that loading will name)
        saved = []
    shared = saved[0] if saved and all(s == saved[0] for s in saved) else {}
    for name, default in COLUMNS.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, shared.get(name, default))
    if getattr(args, "text_b_col", None) == "none":
        args.text_b_col = None


def output_file(text: str) -> str:
    """An argparse type for a file an option writes, refused before any work when it cannot be written there: a
    folder, or a folder that cannot be made or written into (a missing one is made when the file is written)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give the path of a file to write")
    here = next(p for p in [path.parent, *path.parent.parents] if p.exists())  # "." and "/" always exist
    if not here.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {here} is a file, not a folder; choose another path")
    if not os.access(here, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write into {here} (permission denied); choose another "
                                         f"path")
    return text


def add_test_prior_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--test-prior", default="train", choices=["train", "em"],
                   help=f"train: predict at the prior the classifier was trained and calibrated for; em: estimate the "
                        f"class shares of {what} from the classifier's posteriors (EM after temperature scaling on "
                        f"dev; for data not distributed as the training data, e.g. a class-balanced test set) and "
                        f"predict at them, so each text's label depends on the texts predicted with it "
                        f"(default: train)")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default: a help text that does not say it yet gets ``(required)``, ``(default:
    off)`` for a flag (``--no-generate`` too: off unless given), or ``(default: VALUE)``; an option whose default is
    None says in its own text what happens without it (tests/test_layout.py checks every command)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or argparse.SUPPRESS in (text, action.default) or "default:" in text
                or "(required)" in text):  # --help and --version have no default to say
            return text
        if action.required:
            return f"{text} (required)"
        if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false: off unless given
            return f"{text} (default: off)"
        if action.default is not None:
            shown = ", ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
            return f"{text} (default: {shown})"
        return text


class Parser(argparse.ArgumentParser):
    """The ``tailtune`` parser and, through ``add_subparsers``, every command's: options are spelled out in full
    (argparse would otherwise read a prefix as any option it starts, so ``evaluate --test FILE`` became
    ``--test-prior FILE``, and a prefix that one option owns today would change meaning when a second is added),
    and an option a command does not have is answered with the ones it may have meant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse's hook: prints usage and message, exits 2
        if message.startswith("unrecognized arguments: "):
            hints = [hint for token in message.removeprefix("unrecognized arguments: ").split()
                     if token.startswith("--") and (hint := self._option_hint(token.split("=")[0]))]
            message = "\n  ".join([message, *hints, f"'{self.prog} --help' lists every option"])
        super().error(message)

    def _option_hint(self, given: str) -> str:
        import difflib
        known = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
        meant = [s for s in known if s.startswith(given)] or difflib.get_close_matches(given, known, n=3, cutoff=0.75)
        return f"{given}: did you mean {' or '.join(meant[:3])}? (options are written in full)" if meant else ""
