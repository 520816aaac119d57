"""``tailtune tune --ray``: the same search as trials of Ray Tune, on a local Ray instance or a cluster.

The space, the samplers and the pruning mirror the Optuna search of ``hparams``: a grid of choices
is searched exhaustively (``tune.grid_search``), anything else by Optuna's TPE through Ray Tune's
``OptunaSearch`` (seeded); pruning is Ray Tune's median stopping rule on dev macro-F1 at each
evaluation (the counterpart of Optuna's median pruner). Each trial takes one CPU (and one GPU where
the cluster has them) and reports its dev macro-F1 at every evaluation, then its best.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from .errors import ConfigError


def _space(space: list[Any], grid: bool) -> dict:
    from ray import tune
    out = {}
    for d in space:
        if grid:
            out[d.name] = tune.grid_search(list(d.choices))
        elif d.choices:
            out[d.name] = tune.choice(list(d.choices))
        elif d.integer:
            out[d.name] = (tune.lograndint if d.log else tune.randint)(int(d.low), int(d.high) + 1)
        else:
            out[d.name] = (tune.loguniform if d.log else tune.uniform)(d.low, d.high)
    return out


def search_ray(train: Any, dev: Any, space: list[Any], preset: str, backbone: str | None, trials: int, seed: int,
               base: dict, options: dict, prune: bool, grid: bool, address: str,
               log: Callable[[str], None], run_trial: Callable[..., float]) -> dict:
    """``run_trial(train, dev, preset, backbone, seed, base, options, params, report)`` trains one trial
    (``hparams.run_trial``) inside a Ray Tune trial."""
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("tailtune tune --ray needs Ray Tune: pip install 'tailtune[ray,tune]'") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        try:
            ray.init(**kwargs) if address == "local" else ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise ConfigError(f"--ray {address}: no Ray cluster there ({e}); start one (`ray start --head`) or use "
                              f"--ray local") from None

    def trainable(config: dict) -> None:
        def report(step: int, metrics: dict) -> None:
            tune.report({"macro_f1": float(metrics["macro_f1"]), "step": step})
        best = run_trial(train, dev, preset, backbone, seed, base, options, dict(config), report)
        tune.report({"macro_f1": best, "best": best})

    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    n = math.prod(len(d.choices) for d in space) if grid else trials
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1, "gpu": gpus}),
        param_space=_space(space, grid),
        tune_config=tune.TuneConfig(
            metric="macro_f1", mode="max", num_samples=1 if grid else trials,
            search_alg=None if grid else OptunaSearch(seed=seed),
            scheduler=MedianStoppingRule(time_attr="training_iteration", min_samples_required=2) if prune
            else FIFOScheduler()),
        run_config=tune.RunConfig(verbose=0))
    results = tuner.fit()
    rows = []
    for k, r in enumerate(results):
        if r.error is not None:
            rows.append({"number": k, "params": r.config, "value": None, "state": "FAIL"})
            continue
        best = (r.metrics or {}).get("best")
        rows.append({"number": k, "params": {d.name: r.config[d.name] for d in space},
                     "value": best if best is not None else (r.metrics or {}).get("macro_f1"),
                     "state": "COMPLETE" if best is not None else "PRUNED"})
        log(f"trial {k}: {rows[-1]['params']} -> dev macro-F1 {rows[-1]['value']:.4f} ({rows[-1]['state'].lower()})")
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ConfigError("no trial finished; widen the search space or turn pruning off (--no-prune)")
    top = max(done, key=lambda r: r["value"])
    return {"best_params": top["params"], "best_value": top["value"], "trials": rows[:n], "preset": preset,
            "sampler": "grid" if grid else "tpe", "base": base, "options": options, "backend": "ray"}
