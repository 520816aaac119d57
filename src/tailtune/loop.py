"""The one training loop: classification, masked-LM adaptation and prompt pre-training all run here.

The loop knows no method by name. A *job* supplies the micro-batches of each epoch, the loss of a
micro-batch and the role of each trainable parameter (which learning rate it gets); the loop does
the rest: AdamW (no decay on biases and LayerNorms), linear warm-up then linear decay, gradient
accumulation, clipping, a stop on a non-finite loss or gradient, an optional moving average of the weights
(what dev then evaluates), dev evaluation with the best parameters kept, early stopping, resumable checkpoints,
progress and peak memory.

Resuming gives the same run as never stopping: a job's batches depend only on its seed and the
epoch, and a checkpoint holds the parameters, the optimiser's moments, the step, the RNG states,
the best parameters so far, the weight average and the history (safetensors + JSON, no pickle).
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from tqdm.auto import tqdm

from .artefacts import load_checkpoint, save_checkpoint
from .averaging import WeightAverage
from .device import resolve_device, resolve_precision
from .errors import ConfigError, TrainingError
from .optim import adamw, backbone_rates, param_groups, schedule
from .processes import Processes, launch_precision
from .tracking import Tracker, check_tracker


@dataclass
class TrainConfig:
    """Optimisation settings shared by every preset. Field docstrings double as CLI help."""

    epochs: float = 3.0
    """passes over the training data (fractions allowed)"""
    steps: int | None = None
    """optimisation steps in all (none: from epochs)"""
    min_steps: int | None = None
    """at least this many optimisation steps, however small the data (more epochs on few examples)"""
    batch_size: int = 16
    """examples per micro-batch"""
    grad_accum: int = 1
    """micro-batches per optimisation step (gradient accumulation): the effective batch is batch_size x grad_accum"""
    lr: float = 5e-5
    """AdamW learning rate of the backbone"""
    head_lr: float | None = None
    """learning rate of the head (none: same as lr)"""
    module_lr: float | None = None
    """learning rate of task-module parameters: adapters, LoRA, prefixes, soft prompts, BitFit biases (none: lr)"""
    layer_lr_decay: float | None = None
    """layer-wise learning-rate decay of the backbone (discriminative fine-tuning, Howard & Ruder 2018; Sun et al.
    2019): its top layer trains at lr, each layer below at this factor times the one above, the embeddings below the
    first layer (0.9 on a 6-layer model: the embeddings at 0.53 x lr) (none: one lr for the whole backbone)"""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and LayerNorms)"""
    warmup_ratio: float = 0.1
    """share of steps with linear warm-up, then linear decay"""
    max_grad_norm: float = 1.0
    """gradient clipping (global norm)"""
    eval_every: int | None = None
    """evaluate on dev every N optimisation steps (none: once per epoch, or see eval_times)"""
    eval_times: int | None = None
    """evaluate on dev this many times, evenly spread over training (none: once per epoch, or see eval_every)"""
    patience: int | None = None
    """stop after this many evaluations without a better dev score (select_metric) (none: never)"""
    patience_from: float = 0.0
    """early stopping counts evaluations without a better dev score only once this share of the planned steps has
    run, so it stops at patience evaluations past it at the earliest (0.5: not on what dev said while the learning
    rate was still high, where dev scores are noisy)"""
    select_metric: str | None = None
    """the dev score that picks the checkpoint to keep and that early stopping watches: macro_f1, accuracy (steadier
    where many classes have one or two dev texts, but it weighs frequent classes), or last: keep the last step and
    never stop early, dev only reported (none: macro_f1)"""
    weight_average: float | None = None
    """keep an exponential moving average of the trained weights whose time constant is this share of the planned
    steps (0.05 over 2,000 steps: decay 0.99), and use it for dev evaluation, the kept checkpoint and the trained
    model (none: the weights as the last step left them)"""
    save_every: int | None = None
    """with a checkpoint directory: write a resumable checkpoint every N steps (none: at every dev evaluation)"""
    seed: int = 42
    """seed for initialisation, dropout and batch order"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    bf16: bool = False
    """bfloat16 autocast (faster on GPUs and on CPUs with AMX; slower on CPUs without it)"""
    precision: str | None = None
    """fp32, bf16, or auto (whichever a short probe finds faster on this machine); when set it decides bf16"""
    eval_batch_size: int = 64
    """examples per prediction batch"""
    cache_features: bool = True
    """when nothing before the head trains (e.g. Y-Tuning), encode each training text once and reuse it"""
    progress: bool = True
    """show a progress bar"""
    track: str | None = None
    """log the run to a tracker through Accelerate: tensorboard, mlflow, wandb, trackio, ... (none: nothing is
    tracked)"""
    track_dir: str = "tailtune-runs"
    """where trackers that write files put them (TensorBoard event files, MLflow runs)"""
    run_name: str | None = None
    """the run's name in the tracker (none: tailtune)"""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lr", "eval_batch_size", "head_lr", "module_lr", "grad_accum",
                     "steps", "min_steps", "save_every", "eval_every", "eval_times", "patience", "weight_average",
                     "layer_lr_decay"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{name}={value!r}: must be a number > 0")
        for name in ("batch_size", "grad_accum", "eval_batch_size"):
            if not float(getattr(self, name)).is_integer():
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be a whole number")
        if self.layer_lr_decay is not None and self.layer_lr_decay > 1:
            raise ConfigError(f"layer_lr_decay={self.layer_lr_decay!r}: must be in (0, 1] (each layer's rate is this "
                              f"factor times the rate of the layer above; 1: no decay)")
        if self.weight_average is not None and self.weight_average > 1:
            raise ConfigError(f"weight_average={self.weight_average!r}: must be a share of the steps in (0, 1]")
        if self.select_metric not in (None, *SELECT_METRICS):
            raise ConfigError(f"select_metric={self.select_metric!r}: must be one of {', '.join(SELECT_METRICS)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio!r}: must be in [0, 1)")
        if isinstance(self.patience_from, bool) or not isinstance(self.patience_from, (int, float)) \
                or not 0 <= self.patience_from <= 1:
            raise ConfigError(f"patience_from={self.patience_from!r}: must be a share of the steps in [0, 1]")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ConfigError(f"need weight_decay >= 0 and max_grad_norm > 0, got {self.weight_decay}, "
                              f"{self.max_grad_norm}")
        check_tracker(self.track)
        device = resolve_device(self.device)  # a device that is not there fails now, not after loading a model
        launched = launch_precision()  # `accelerate launch --mixed_precision bf16` (fp16 is refused here)
        if launched == "bf16" and self.precision is None:
            self.bf16 = True
        if self.precision is not None:
            if self.precision == "int8":
                raise ConfigError("precision='int8' is for prediction only; train in fp32, bf16 or auto")
            self.bf16 = resolve_precision(self.precision, device) == "bf16"

    def to_dict(self) -> dict:
        return asdict(self)


SELECT_METRICS = ("macro_f1", "accuracy", "last")  # what may pick a run's kept checkpoint (select_metric)
# settings that do not change what a run computes: a checkpoint may be resumed with other values
NOT_RESULT_SETTINGS = ("device", "progress", "eval_batch_size", "save_every", "track", "track_dir", "run_name")


@dataclass
class TrainResult:
    best_dev_macro_f1: float | None
    best_step: int
    steps: int
    epochs_run: float
    seconds: float
    history: list = field(default_factory=list)
    peak_memory_mb: float | None = None  # peak resident memory (CPU) or allocated memory (CUDA)
    planned_steps: int = 0  # the steps the run was set to take (``steps`` is fewer when it stopped early)
    steps_per_epoch: int = 0


class Job(Protocol):
    """What the loop trains."""

    model: torch.nn.Module
    micro_batches: int  # per epoch
    settings: dict  # what must be equal for a checkpoint to be resumed
    total_steps: int  # set by the loop before the first step

    def batches(self, epoch: int) -> list: ...

    def loss(self, batch: Any, step: int) -> torch.Tensor: ...

    def param_roles(self) -> dict[str, str]: ...


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak, or resident set size sampled every 50 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self._stop = device, None, None

    @staticmethod
    def _rss_mb() -> float | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError):
            return None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._stop = threading.Event()
        self.peak_mb = self._rss_mb()

        def sample() -> None:
            while not self._stop.wait(0.05):
                now = self._rss_mb()
                if now is not None:
                    self.peak_mb = max(self.peak_mb or 0.0, now)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].to(torch.uint8).cpu())
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu(), device)


class _Checkpoints:
    """Where a run's checkpoints go and how they come back."""

    GROUPS = ("params", "optimizer", "best", "rng", "average")

    def __init__(self, directory: str | Path | None, settings: dict, resume: bool) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.settings, self.resume = settings, resume
        self.last_step: int | None = None

    def load(self, device: torch.device) -> tuple[dict, dict] | None:
        if self.directory is None:
            if self.resume:
                raise ConfigError("resume needs a checkpoint directory")
            return None
        found = load_checkpoint(self.directory, self.GROUPS, str(device))
        if found is None:
            if self.resume:
                raise ConfigError(f"nothing to resume: {self.directory} holds no checkpoint (a run writes one at "
                                  f"every dev evaluation or every --save-every steps)")
            return None
        tensors, state = found
        if not self.resume:
            raise ConfigError(f"{self.directory} holds a checkpoint of an unfinished run (step {state.get('step')}); "
                              f"continue it with --resume (resume=True), or start over with --overwrite")
        diff = _differences(state.get("settings", {}), self.settings)
        if diff:
            raise ConfigError(f"the checkpoint in {self.directory} is of a run with other settings ("
                              f"{'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); resume with the same "
                              f"settings, or start over with --overwrite")
        self.last_step = state["step"]
        return tensors, state

    def save(self, named: dict, moments: dict[str, dict], best: dict | None, device: torch.device,
             state: dict, fixed: dict | None = None, average: dict | None = None) -> None:
        """``named``: the trained parameters, ``moments`` their optimiser state by name; ``fixed``: parameters the run
        keeps as they are, saved beside them; ``average``: the weight average by name."""
        if self.directory is None:
            return
        bad = [n for n, p in named.items() if not bool(torch.isfinite(p).all())]
        if bad:  # never keep a broken state
            raise TrainingError(f"training diverged at step {state['step']}: parameters {bad[:3]} are not finite")
        flat = {f"{name}::{key}": value.reshape(-1) if value.dim() == 0 else value
                for name, state in moments.items() for key, value in state.items()}
        save_checkpoint(self.directory, {"params": {**(fixed or {}), **named}, "optimizer": flat, "best": best or {},
                                         "rng": _rng_state(device), **({"average": average} if average else {})},
                        {**state, "settings": self.settings})
        self.last_step = state["step"]


def run(job: Job, cfg: TrainConfig, evaluate: Callable[[], dict] | None = None, *,
        checkpoint_dir: str | Path | None = None, resume: bool = False, metric: str | None = None,
        log: Callable[[str], None] | None = None, before: Callable[[], None] | None = None,
        on_evaluate: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train ``job.model`` in place; with ``evaluate``, keep the parameters with the best dev ``metric`` (default:
    ``cfg.select_metric``, else macro-F1); the result's ``best_dev_macro_f1`` is the kept parameters' dev macro-F1.

    ``evaluate()`` returns a dict of dev metrics; it runs every ``cfg.eval_every`` steps (default:
    each epoch) and after the last step. ``before()`` runs inside the timed region before the
    first step (e.g. caching frozen features); ``on_evaluate(step, metrics)`` after each evaluation (an
    exception it raises ends the run). With ``checkpoint_dir`` a checkpoint is written at
    every evaluation (or every ``cfg.save_every`` steps); ``resume`` continues from it.
    """
    metric = metric or cfg.select_metric or "macro_f1"
    watched = "macro_f1" if metric == "last" else metric  # (last: dev macro-F1 is only reported)
    procs = Processes(resolve_device(cfg.device))  # one process, or several from `accelerate launch`
    device = procs.device
    if not procs.main:
        log = None
    model = job.model
    model.to(device).train()
    torch.manual_seed(cfg.seed)
    roles = job.param_roles()
    named = {n: p for n, p in model.named_parameters() if n in roles}
    if not named:
        raise ConfigError("nothing to train: every parameter is frozen")
    params = list(named.values())
    # what the model would train but this run does not, e.g. the body a contrastive stage tuned before a head-only
    # fine-tuning: kept in checkpoints too, so a resumed run (which skips the stages before) has the same body
    role = getattr(model, "role", None)
    fixed = {n: p for n, p in model.named_parameters() if n not in named and role is not None and role(n) is not None}
    procs.broadcast(params)
    accum = int(cfg.grad_accum)
    window_size = accum * procs.world  # micro-batches per optimisation step, over all processes
    steps_per_epoch = max(1, math.ceil(job.micro_batches / window_size))
    by_epochs = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    total = cfg.steps or max(by_epochs, cfg.min_steps or 0)
    if log and not cfg.steps and total > by_epochs:  # say so, as the user may have asked for those epochs
        log(f"training {total} steps ({total / steps_per_epoch:g} epochs of {steps_per_epoch} steps) instead of the "
            f"{by_epochs} steps of {cfg.epochs:g} epochs: min_steps={cfg.min_steps} sets a floor (--min-steps 1 keeps "
            f"to --epochs)")
    warmup = int(total * cfg.warmup_ratio)
    if log and cfg.layer_lr_decay and cfg.layer_lr_decay < 1:
        body = backbone_rates(roles, cfg)
        log(f"layer-wise lr decay {cfg.layer_lr_decay:g}: " + (
            f"the backbone trains at {body[0]:.3g} at the bottom to {body[1]:.3g} at the top" if body else
            "not applied, as no backbone weight trains in this run (task modules keep --module-lr, the head --head-lr)"))
    optimizer = adamw(param_groups(model, roles, cfg), device, procs)
    if procs.shards and log:
        log(procs.sharding.describe(procs.world, sum(p.numel() for p in params if id(p) in procs.held(optimizer)[0]),
                                    sum(p.numel() for p in params)))
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    eval_every = cfg.eval_every or (math.ceil(total / cfg.eval_times) if cfg.eval_times else steps_per_epoch)
    job.total_steps = total
    checkpoints = _Checkpoints(checkpoint_dir, job.settings, resume)
    average = WeightAverage(params, cfg.weight_average, total) if cfg.weight_average else None

    state = {"step": 0, "epoch": 0, "window": 0, "history": [], "best": None, "best_step": 0, "bad_evals": 0,
             "best_macro_f1": None,
             "seconds": 0.0, "stopped": False, "total_steps": total}
    best_state: dict | None = None
    found = checkpoints.load(device)
    if found is not None:
        tensors, saved = found
        state.update({k: saved[k] for k in state if k in saved})
        with torch.no_grad():
            for n, p in fixed.items():
                if n in tensors["params"]:
                    p.copy_(tensors["params"][n])
            for n, p in named.items():
                p.copy_(tensors["params"][n])
        procs.restore_moments(optimizer, named, {n: {k.split("::", 1)[1]: v for k, v in tensors["optimizer"].items()
                                                     if k.startswith(n + "::")} for n in named})
        best_state = tensors["best"] or None
        if average is not None and tensors["average"]:  # (a run without one has other settings: refused above)
            average.load([tensors["average"][n] for n in named])
        _set_rng_state(tensors["rng"], device)
        if log:
            log(f"resuming from {checkpoints.directory} at step {state['step']} of {total}")

    tracker = Tracker(cfg.track, cfg.track_dir, cfg.run_name, {"train": cfg.to_dict(), **job.settings},
                      device.type == "cpu") if cfg.track and procs.main else None
    if tracker:
        tracker.log({"params/trainable": sum(p.numel() for p in params),
                     "params/total": sum(p.numel() for p in model.parameters())}, state["step"])
    start = time.perf_counter()
    bar = tqdm(total=total, initial=state["step"], disable=not cfg.progress or not procs.main, desc="train")

    def elapsed() -> float:
        return state["seconds"] + time.perf_counter() - start

    def checkpoint() -> None:
        if checkpoints.directory is None:
            return
        moments = procs.moments(optimizer, named)  # (every process: a collective when the state is sharded)
        if procs.main:
            checkpoints.save(named, moments, best_state, device, {**state, "seconds": elapsed()}, fixed,
                             dict(zip(named, average.average)) if average is not None else None)

    with PeakMemory(device) as memory:
        if before is not None:
            before()
        step = state["step"]
        while step < total and not state["stopped"]:
            batches = job.batches(state["epoch"])
            windows = [batches[i:i + window_size] for i in range(0, len(batches), window_size)]
            for w in range(state["window"], len(windows)):
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * schedule(step, total, warmup)
                losses = []
                n = len(windows[w])  # each loss / n: the window's mean, summed over processes below
                for b in procs.share(windows[w]):
                    loss = job.loss(b, step)
                    value = loss.item()
                    if math.isfinite(value):
                        (loss / n if n > 1 else loss).backward()
                    losses.append(value)
                loss_sum, count = procs.sum(sum(losses), len(losses))
                if not math.isfinite(loss_sum):
                    raise _diverged(step + 1, total, f"the loss is {loss_sum}", cfg, checkpoints)
                procs.sum_gradients(params)
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if not bool(torch.isfinite(norm)):
                    raise _diverged(step + 1, total, f"the gradient norm is {norm.item()}", cfg, checkpoints)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if average is not None:
                    average.update(step)
                step += 1
                state.update(step=step, window=w + 1)
                bar.update(1)
                record = {"step": step, "loss": loss_sum / count}
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                evaluated = evaluate is not None and (step % eval_every == 0 or step == total)
                if evaluated:
                    with average.in_model() if average is not None else nullcontext():  # (what is evaluated is kept)
                        metrics = evaluate()
                        model.train()
                        record.update({"dev_" + k: v for k, v in metrics.items()
                                       if isinstance(v, float) and math.isfinite(v) and k != "theta"})
                        score = metrics[watched]
                        if state["best"] is None or score > state["best"] or metric == "last":
                            state.update(best=score, best_step=step, bad_evals=0,
                                         best_macro_f1=metrics.get("macro_f1"))
                            best_state = {n: p.detach().clone() for n, p in named.items()}
                        elif step >= cfg.patience_from * total:  # (evaluations before the floor do not count)
                            state["bad_evals"] += 1
                            state["stopped"] = cfg.patience is not None and state["bad_evals"] >= cfg.patience
                        if on_evaluate is not None:
                            on_evaluate(step, metrics)
                    if log:
                        log(f"step {step}/{total} (epoch {step / steps_per_epoch:.2f}): loss {record['loss']:.4f}, "
                            f"dev {watched} {score:.4f}, {'kept' if metric == 'last' else 'best'} {state['best']:.4f} "
                            f"at step {state['best_step']}" + ("; stopping early" if state["stopped"] else ""))
                state["history"].append(record)
                if tracker:
                    tracker.log({"train/loss": record["loss"], "train/lr": optimizer.param_groups[0]["lr"],
                                 **{"dev/" + k[4:]: v for k, v in record.items() if k.startswith("dev_")}}, step)
                if cfg.save_every is not None and step % cfg.save_every == 0 or (cfg.save_every is None and evaluated):
                    checkpoint()
                    if log and not evaluated and checkpoints.directory is not None:
                        log(f"step {step}/{total}: loss {record['loss']:.4f}; checkpoint saved")
                if step >= total or state["stopped"]:
                    break
            if state["window"] >= len(windows):  # the epoch is complete
                state.update(epoch=state["epoch"] + 1, window=0)
        bar.close()
    if best_state is None and average is not None:  # no dev set: the model is the average at the last step
        best_state = dict(zip(named, average.average))
    if best_state is not None:
        with torch.no_grad():
            for n, p in named.items():
                if n in best_state:
                    p.copy_(best_state[n])
    model.eval()
    if tracker:
        kept = "dev/" + ("last_" if metric == "last" else "best_") + watched
        tracker.end({"time/seconds": elapsed(), "memory/peak_mb": memory.peak_mb, kept: state["best"]}, step)
    return TrainResult(state["best"] if metric == "macro_f1" else state["best_macro_f1"], state["best_step"], step,
                       step / steps_per_epoch, elapsed(), state["history"], memory.peak_mb, total, steps_per_epoch)


def _diverged(step: int, total: int, what: str, cfg: TrainConfig, checkpoints: _Checkpoints) -> TrainingError:
    rates = ", ".join(f"{k} {getattr(cfg, k):g}" for k in ("lr", "head_lr", "module_lr") if getattr(cfg, k) is not None)
    kept = (f" The last good checkpoint (step {checkpoints.last_step}) is in {checkpoints.directory}."
            if checkpoints.last_step else "")
    return TrainingError(f"training diverged at step {step} of {total}: {what}, so nothing of this run is kept or "
                         f"saved.{kept} Try a learning rate 10x lower (now: {rates})"
                         f"{', or without --bf16' if cfg.bf16 else ''}.")
