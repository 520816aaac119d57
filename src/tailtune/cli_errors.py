"""How the command line speaks when something goes wrong: one line that says what and how to fix it, warnings as
``tailtune: warning: ...``, and a traceback only with ``--debug``."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from .errors import TailtuneError


def show_warning(message: Warning | str, category: type, filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    print(f"tailtune: warning: {message}", file=sys.stderr)


def run_command(args: argparse.Namespace, command: str, debug: bool) -> int:
    """The command, with its errors told to the user (a traceback only with --debug)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", UserWarning)
        if not debug:
            warnings.showwarning = show_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            if debug:
                raise
            hint = " (continue with --resume)" if command in ("train", "adapt-lm", "pretrain-prompt") else ""
            print(f"tailtune {command}: interrupted{hint}", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. `tailtune stats ... | head`
            sys.stdout = open(os.devnull, "w")
            return 0
        except TailtuneError as e:
            if debug:
                raise
            print(f"tailtune {command}: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            if debug:
                raise
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            print(f"tailtune {command}: error: {where}{e.strerror or e}", file=sys.stderr)
            return 2
        except Exception as e:  # a bug or an environment problem: one line, the traceback with --debug
            if debug:
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            print(f"tailtune {command}: unexpected error: {type(e).__name__}: {first} (run again with --debug for "
                  f"the traceback; if it looks like a bug in tailtune, please report it)", file=sys.stderr)
            return 1
