"""Experiment grids on Ray (``tailtune run --ray auto|local|ADDRESS``).

Each (dataset, preset, seed) is one Ray task with the resources of the experiment's ``ray:`` block
(``num_cpus``, default 1; ``num_gpus``, default 0; ``max_retries``, default 1). A task that raises
is retried up to ``max_retries`` times, then reported; the other runs go on. Results come back to
this process, which appends each to ``results.jsonl`` once, as it arrives, so an interrupted grid
resumes like the plain runner. A task writes its ``runs/`` files where it runs: on a cluster of
several machines, put ``output_dir`` on a filesystem they share.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, TailtuneError

RAY_OPTIONS = {"num_cpus": 1, "num_gpus": 0, "max_retries": 1}


def _ray_options(cfg: dict) -> dict:
    given = dict(cfg.get("ray") or {})
    unknown = sorted(set(given) - set(RAY_OPTIONS))
    if unknown:
        raise ConfigError(f"ray: unknown setting(s) {unknown}; known: {', '.join(RAY_OPTIONS)}")
    return {**RAY_OPTIONS, **given}


def run_on_ray(cfg: dict, todo: list[tuple[str, tuple[str, str, int]]], out_dir: Path, address: str,
               run_one: Callable[..., dict], finished: Callable[[str, dict], None],
               log: Callable[[str], None]) -> None:
    """Run ``todo`` as Ray tasks of ``run_one(cfg, dataset, preset, seed, out_dir)``; ``finished(name, row)``
    for each result as it arrives."""
    opts = _ray_options(cfg)
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'tailtune[ray]' (or run without --ray)") from None
    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address == "local":
            ray.init(**kwargs)
        else:
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as e:
                raise ConfigError(f"--ray {address}: no Ray cluster there ({e}); start one (`ray start --head`) "
                                  f"or use --ray local") from None
    task = ray.remote(num_cpus=opts["num_cpus"], num_gpus=opts["num_gpus"], max_retries=opts["max_retries"],
                      retry_exceptions=True)(run_one)
    pending = {task.remote(cfg, *run, out_dir): name for name, run in todo}
    log(f"ray: {len(pending)} runs sent ({opts['num_cpus']} CPU, {opts['num_gpus']} GPU each; "
        f"{ray.cluster_resources().get('CPU', 0):g} CPUs in the cluster)")
    failed = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready[0])
            try:
                finished(name, ray.get(ready[0]))
            except ray.exceptions.RayError as e:
                cause = getattr(e, "cause", None) or e
                failed.append(f"{name}: {type(cause).__name__}: {str(cause).splitlines()[-1] if str(cause) else ''}")
                log(f"{name}: failed after {opts['max_retries']} retries ({failed[-1]})")
    finally:
        if started:
            ray.shutdown()
    if failed:
        raise TailtuneError(f"{len(failed)} run(s) failed on Ray (the others are in results.jsonl; run again to "
                            f"retry only these): " + "; ".join(failed))
