"""Errors worded for the user: each says what is wrong and how to fix it.

Every error tailtune raises on purpose is a ``TailtuneError`` (a ``ValueError``); the command
line prints it as one line and exits with status 2. Anything else is a bug or an environment
problem, printed as one line too (``--debug`` shows the traceback).
"""
from __future__ import annotations

import difflib
from typing import Iterable


class TailtuneError(ValueError):
    """A problem with the user's input, configuration or files, worded so the user can fix it."""


class ConfigError(TailtuneError):
    """A bad option, preset, axis entry or combination of them."""


class DataError(TailtuneError):
    """A problem with the user's data."""


class ArtefactError(TailtuneError):
    """A saved classifier, module, prompt or checkpoint that cannot be used as it is."""


class TrainingError(TailtuneError):
    """Training cannot go on (for example, the loss stopped being a finite number)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``name``, else an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
