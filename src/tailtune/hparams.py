"""Hyper-parameter search with Optuna (``tailtune tune``): maximise dev macro-F1, prune bad trials early.

A search space is a list of ``NAME=SPEC``: ``lr=1e-5:1e-3:log`` (a float range, log scale),
``epochs=2:10`` (an int range when both ends are whole numbers), ``focal_gamma=0.5:3`` (a float
range), ``head=mlp,cosine`` (a choice). A name is a training setting (``TrainConfig``: lr, head_lr,
epochs, batch_size, ...), an axis (head, objective, ...) or an option of a chosen entry
(focal_gamma, lora_r, ...). When every dimension is a choice, the grid is searched exhaustively;
otherwise Optuna's TPE sampler (seeded) proposes trials and its median pruner stops a trial whose
dev macro-F1 at an evaluation is below the median of earlier trials at that step.

The best configuration is written as an entry of an experiment YAML's ``presets:`` block, so it is
reused as it is by ``tailtune run`` (and its values map one to one onto ``tailtune train`` flags).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .loop import TrainConfig

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


@dataclass(frozen=True)
class Dimension:
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _number(text: str) -> float | int | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_dimension(text: str) -> Dimension:
    """``NAME=LOW:HIGH[:log]`` or ``NAME=A,B,C``."""
    name, sep, spec = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not spec:
        raise ConfigError(f"search space {text!r}: write NAME=LOW:HIGH[:log] or NAME=A,B,C (e.g. lr=1e-5:1e-3:log)")
    if ":" in spec:
        parts = spec.split(":")
        log = parts[-1] == "log"
        bounds = parts[:-1] if log else parts
        try:
            low, high = (float(b) for b in bounds)
        except ValueError:
            raise ConfigError(f"search space {text!r}: the range needs two numbers, LOW:HIGH") from None
        if len(bounds) != 2 or not low < high or (log and low <= 0):
            raise ConfigError(f"search space {text!r}: need LOW < HIGH (and LOW > 0 on a log scale)")
        integer = all(b.lstrip("-").isdigit() for b in bounds)
        return Dimension(name, low, high, log, integer)
    return Dimension(name, choices=tuple(_number(c.strip()) for c in spec.split(",") if c.strip()))


def _split(params: dict) -> tuple[dict, dict]:
    """(TrainConfig settings, classifier overrides) of a trial's parameters."""
    return ({k: v for k, v in params.items() if k in TRAIN_FIELDS},
            {k: v for k, v in params.items() if k not in TRAIN_FIELDS})


def run_trial(train: Any, dev: Any, preset: str, backbone: str | None, seed: int, base: dict, options: dict,
              params: dict, report: Callable[[int, dict], None] | None, fit_kw: dict | None = None) -> float:
    """Train one trial's classifier; ``report(step, dev_metrics)`` at each evaluation; its best dev macro-F1.
    ``fit_kw``: what every trial's ``fit`` also takes (unlabelled texts and the MLM weight)."""
    from .api import TailtuneClassifier
    from .config import preset_train_config
    train_kw, clf_kw = _split(params)
    tc = preset_train_config(preset, **{"progress": False, "seed": seed, **base, **train_kw})
    clf = TailtuneClassifier(preset, backbone, train_config=tc, **{**options, **clf_kw})
    clf.fit(train, dev=dev, on_evaluate=report, **(fit_kw or {}))
    return float(clf.train_result_.best_dev_macro_f1)


def search(train: Any, dev: Any, space: list[Dimension], preset: str = "auto", backbone: str | None = None,
           trials: int = 20, seed: int = 0, base: dict | None = None, options: dict | None = None,
           prune: bool = True, log: Callable[[str], None] = print, ray: str | None = None,
           unlabeled: list[str] | None = None, mlm_weight: float = 1e-4, descriptions: dict | None = None,
           description_copies: int = 4) -> dict:
    """Run the search; returns the best parameters, its dev macro-F1 and every trial. ``ray`` (``local``,
    ``auto`` or a cluster address) runs the trials as Ray Tune trials instead of in this process. ``unlabeled``
    texts (and ``mlm_weight``) and label ``descriptions`` (``description_copies`` each) go to every trial's
    ``fit``, as in ``train --unlabeled`` and ``train --descriptions``."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("tailtune tune needs Optuna: pip install 'tailtune[tune]'") from None
    from .api import TailtuneClassifier, check_unlabeled
    from .config import preset_train_config
    if dev is None or not len(dev):
        raise ConfigError("tailtune tune ranks trials on dev macro-F1: give a dev split (--dev)")
    names = [d.name for d in space]
    if len(set(names)) != len(names):
        raise ConfigError(f"the search space names a setting twice: {names}")
    base, options = dict(base or {}), dict(options or {})
    for d in space:  # every setting must be one a classifier or TrainConfig takes: fail before any trial
        sample = d.choices[0] if d.choices else (int(d.low) if d.integer else d.low)
        train_kw, clf_kw = _split({d.name: sample})
        preset_train_config(preset, **{**base, **train_kw})
        probe = TailtuneClassifier(preset, backbone, **{**options, **clf_kw})
        if unlabeled is not None:  # (a classifier with no use for them is refused now, not in the first trial)
            check_unlabeled(probe.config, train, mlm_weight)
    fit_kw = {} if unlabeled is None else {"unlabeled": list(unlabeled), "mlm_weight": mlm_weight}
    if descriptions:  # (unknown labels or a pair task are refused now, not in the first trial)
        from .data import check_descriptions
        check_descriptions(train, descriptions, description_copies)
        fit_kw.update(descriptions=dict(descriptions), description_copies=description_copies)
    given = {"descriptions": {"texts": dict(descriptions), "copies": description_copies}} if descriptions else {}
    trial_run = functools.partial(run_trial, fit_kw=fit_kw)
    grid = all(d.choices for d in space)
    if ray is not None:
        from .hparams_ray import search_ray
        return {**search_ray(train, dev, space, preset, backbone, trials, seed, base, options, prune, grid, ray, log,
                             trial_run), **given}
    sampler = optuna.samplers.GridSampler({d.name: list(d.choices) for d in space}, seed=seed) if grid \
        else optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    n = min(trials, math.prod(len(d.choices) for d in space)) if grid else trials

    def objective(trial: Any) -> float:
        params = {d.name: d.suggest(trial) for d in space}

        def report(step: int, metrics: dict) -> None:
            trial.report(metrics["macro_f1"], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"dev macro-F1 {metrics['macro_f1']:.4f} at step {step}")
        value = trial_run(train, dev, preset, backbone, seed, base, options, params, report)
        log(f"trial {trial.number}: {params} -> dev macro-F1 {value:.4f}")
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n, catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ConfigError("no trial finished; widen the search space or turn pruning off (--no-prune)")
    rows = [{"number": t.number, "params": t.params, "value": t.value, "state": t.state.name} for t in study.trials]
    return {"best_params": study.best_params, "best_value": study.best_value, "trials": rows, "preset": preset,
            "sampler": "grid" if grid else "tpe", "base": base, "options": options, **given}


def best_yaml(result: dict, name: str = "tuned") -> str:
    """The best configuration as an experiment YAML ``presets:`` entry."""
    import yaml
    train_kw, clf_kw = _split(result["best_params"])
    entry = {"preset": result["preset"], **result["options"], **clf_kw}
    train = {**result["base"], **train_kw}
    if train:
        entry["train"] = train
    done = sum(t["state"] == "COMPLETE" for t in result["trials"])
    head = (f"# tailtune tune: best dev macro-F1 {result['best_value']:.4f} of {len(result['trials'])} trials "
            f"({done} finished, {result['sampler']} sampler)\n# use it under `presets:` in an experiment YAML "
            f"(tailtune run), or as tailtune train flags\n")
    if result.get("descriptions"):  # (data, not a preset setting: the dataset's entry of the YAML takes them)
        head += (f"# every trial trained with label descriptions ({result['descriptions']['copies']} copies each): "
                 f"give them as the dataset's `descriptions:` in the YAML, or --descriptions to tailtune train\n")
    return head + yaml.safe_dump({"presets": {name: entry}}, sort_keys=False)


def write_best(result: dict, path: str | Path, name: str = "tuned") -> Path:
    from .artefacts import atomic_write_text
    atomic_write_text(path, best_yaml(result, name))
    return Path(path)
