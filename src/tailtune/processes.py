"""The processes of one training run: one, or several started by ``accelerate launch`` (or torchrun).

With several, Accelerate's ``PartialState`` sets up the process group (gloo on CPU, NCCL on GPUs)
and gives each process its device. The loop then runs data-parallel: every process builds the same
length-grouped micro-batches (they depend only on the seed and the epoch), takes its share of each
optimisation window (``window[rank::world]``) and, after the backward passes, the gradients are
summed over processes. With each loss divided by the size of the whole window, that is exactly the
gradient a single process gets with ``grad_accum`` = ``world`` x ``grad_accum``; so N processes
compute the run one process computes with the same global batch (up to float summation order and
dropout draws). Each process predicts its share of the dev set and the scores are gathered, so
every process computes the same metrics and keeps the same best state; checkpoints and saved
classifiers are written by the main process only.

Launched with FSDP or DeepSpeed (``accelerate launch --use_fsdp`` / ``--use_deepspeed``), the optimiser state
is sharded over the processes (ZeRO stage 1, through torch's ``ZeroRedundancyOptimizer``): each process
keeps the AdamW moments of its share of the parameters, steps that share and broadcasts it to the others.
The AdamW moments are half of fp32 training state (parameters, gradients, moments), so N processes
hold 4 + 4 + 8/N bytes per trainable parameter instead of 16. Gradients are summed as above, so the run
computes what the data-parallel one computes. Parameters are not sharded (FSDP's FULL_SHARD, ZeRO stage 3):
that needs every forward pass of every method to run through wrapped modules, and the encoders tailtune
tunes fit one device; such a launch runs with the optimiser state sharded and says so. Offloading is refused.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
import torch

from .errors import ConfigError


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Sharding:
    """What a sharded launch asked for (``accelerate launch --use_fsdp`` or ``--use_deepspeed``)."""

    launcher: str  # "FSDP" or "DeepSpeed"
    asked: str  # the strategy as asked, e.g. "FULL_SHARD" or "ZeRO stage 3"
    parameters: bool  # whether it asked for the parameters to be sharded too (not done: see the module docstring)
    note: str = ""

    def describe(self, world: int, held: int, total: int) -> str:
        return (f"{self.launcher} ({self.asked}): the optimiser state is sharded over {world} processes (ZeRO stage 1): "
                f"this process holds the AdamW moments of {held:,} of {total:,} trainable parameters; gradients are "
                f"summed over processes as in data-parallel training" +
                ("; the parameters are not sharded (every process holds the whole model)" if self.parameters else "") +
                self.note)


_FSDP_STRATEGIES = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD",
                    "5": "HYBRID_SHARD_ZERO2"}


def sharding_request() -> Sharding | None:
    """The sharding that ``accelerate launch`` asked for (from the environment it sets), or None (also for FSDP's
    NO_SHARD and ZeRO stage 0, which are plain data parallelism); a ConfigError, before any training, for
    offloading, which tailtune does not do."""
    if _flag("ACCELERATE_USE_FSDP"):
        if _flag("FSDP_OFFLOAD_PARAMS"):
            raise ConfigError("launched with FSDP and --fsdp_offload_params true: tailtune does not offload parameters "
                              "or optimiser state to the CPU. Launch without it (the encoders tailtune tunes fit one "
                              "device; bf16 and --grad-accum lower the memory per process)")
        raw = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
        strategy = _FSDP_STRATEGIES.get(raw, raw).upper()
        if os.environ.get("FSDP_VERSION") == "2":  # FSDP2 has no strategy, only whether to reshard after forward
            strategy = "FSDP2, " + ("reshard after forward" if _flag("FSDP_RESHARD_AFTER_FORWARD")
                                    or "FSDP_RESHARD_AFTER_FORWARD" not in os.environ else "no reshard after forward")
        if strategy == "NO_SHARD":
            return None
        return Sharding("FSDP", strategy, "SHARD_GRAD_OP" not in strategy and "no reshard" not in strategy)
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        offload = [os.environ.get(v, "none").lower() for v in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                                                              "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")]
        config = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
        if config and config.lower() != "none":
            try:
                zero = json.loads(Path(config).read_text()).get("zero_optimization", {})
            except (OSError, ValueError) as e:
                raise ConfigError(f"the DeepSpeed config file {config} could not be read: {e}") from None
            stage = str(zero.get("stage", stage or 0))
            offload += [str((zero.get(k) or {}).get("device", "none")).lower()
                        for k in ("offload_optimizer", "offload_param")]
        if any(d not in ("none", "") for d in offload):
            raise ConfigError("launched with DeepSpeed offloading (optimizer or parameters to cpu/nvme): tailtune does "
                              "not offload. Launch without it (the encoders tailtune tunes fit one device; bf16 and "
                              "--grad-accum lower the memory per process)")
        stage = stage or "2"
        if stage == "0":
            return None
        return Sharding("DeepSpeed", f"ZeRO stage {stage}", stage == "3",
                        f"; of the DeepSpeed config file only the ZeRO stage and offloading are read (batch size, "
                        f"precision and optimiser come from tailtune's options)" if config and config != "none" else "")
    return None


def launch_precision() -> str | None:
    """``accelerate launch --mixed_precision``: "bf16", or None for none; fp16 and fp8 are refused (the loop has no
    loss scaling)."""
    asked = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if asked in ("no", "", "fp32"):
        return None
    if asked == "bf16":
        return "bf16"
    raise ConfigError(f"launched with --mixed_precision {asked}: tailtune trains in fp32 or under bf16 autocast (it "
                      f"has no loss scaling for fp16). Launch with --mixed_precision bf16 or no")


class Processes:
    """Rank, world size and the collective operations of the loop (trivial for one process)."""

    def __init__(self, device: torch.device) -> None:
        self.sharding = sharding_request()
        self.world, self.rank, self.state = 1, 0, None
        self.device = device
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState
            self.state = PartialState(cpu=device.type == "cpu")
            end_processes_at_exit()
            self.world, self.rank = self.state.num_processes, self.state.process_index
            if device.type != "cpu":
                self.device = self.state.device

    def broadcast(self, params: list[torch.nn.Parameter]) -> None:
        """Every process starts from the main process's parameters."""
        if self.world > 1:
            with torch.no_grad():
                for p in params:
                    torch.distributed.broadcast(p.data, 0)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, window: list) -> list:
        """This process's micro-batches of an optimisation window."""
        return window[self.rank::self.world]

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over processes (one flat all-reduce). A parameter that got no
        gradient on any process keeps none, as in one process (AdamW then leaves it alone)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has = torch.tensor([float(p.grad is not None) for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = torch.cat([g.reshape(-1) for g in grads] + [has])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g, seen in zip(params, grads, flat[-len(params):].tolist()):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone() if seen else None
            offset += n

    def gather_rows(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """The rows of every process's share (``rows[rank::world]``, as ``share`` gives) back in order."""
        if self.world == 1:
            return local
        width = -(-total // self.world)
        padded = torch.zeros(width, *local.shape[1:], dtype=local.dtype, device=self.device)
        padded[:len(local)] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        out = torch.empty(total, *local.shape[1:], dtype=local.dtype)
        for rank, part in enumerate(parts):
            n = len(range(rank, total, self.world))
            out[rank::self.world] = part[:n].cpu()
        return out

    def sum(self, *values: float) -> list[float]:
        """Scalars summed over processes."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    @property
    def shards(self) -> bool:
        """Whether the optimiser state is sharded over processes (a sharded launch of more than one)."""
        return self.sharding is not None and self.world > 1

    def optimizer(self, groups: list[dict], fused: bool) -> torch.optim.Optimizer:
        """AdamW over ``groups``; sharded over processes (ZeRO stage 1) under a sharded launch."""
        if not self.shards:
            return torch.optim.AdamW(groups, fused=fused)
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, fused=fused)

    @staticmethod
    def held(optimizer: torch.optim.Optimizer) -> tuple[set[int], dict]:
        """The ids of the parameters whose state this process keeps, and that state."""
        local = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps this process's share there
        return {id(p) for g in local.param_groups for p in g["params"]}, local.state

    def moments(self, optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter]) -> dict[str, dict]:
        """Each parameter's optimiser state by name, whole on the main process (a collective when sharded: every
        process calls it). A parameter without state (it never had a gradient) has none."""
        ids, state = self.held(optimizer)
        if not self.shards:
            return {n: dict(state[p]) for n, p in named.items() if p in state and state[p]}
        mine = torch.tensor([float(id(p) in ids and bool(state.get(p))) * (self.rank + 1) for p in named.values()],
                            device=self.device)
        torch.distributed.all_reduce(mine)  # each parameter's state is on one process: its rank + 1, or 0 for none
        out = {}
        for (name, p), owner in zip(named.items(), mine.long().tolist()):
            if not owner:
                continue
            keys = ("step", "exp_avg", "exp_avg_sq")
            flat = (torch.cat([state[p][k].reshape(-1).to(p.dtype) for k in keys]) if owner == self.rank + 1 else
                    torch.empty(1 + 2 * p.numel(), dtype=p.dtype, device=p.device))
            torch.distributed.broadcast(flat, owner - 1)
            if self.main:
                out[name] = {"step": flat[:1].reshape(()).float(), "exp_avg": flat[1:1 + p.numel()].view_as(p),
                             "exp_avg_sq": flat[1 + p.numel():].view_as(p)}
        return out

    def restore_moments(self, optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter],
                        moments: dict[str, dict]) -> None:
        """Give the optimiser back the state ``moments`` holds for the parameters whose state this process keeps."""
        ids, state = self.held(optimizer)
        for name, p in named.items():
            if id(p) in ids and moments.get(name):
                state[p] = {k: (v.reshape(()) if k == "step" else v).to(p.device) for k, v in moments[name].items()}

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def is_main_process() -> bool:
    """Whether this is the main process of a run (always, without a launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output_once(target: str | Path, overwrite: bool, resume: bool, device: str = "auto") -> Path:
    """``artefacts.prepare_output`` on the main process; the others wait until it is done."""
    from .artefacts import prepare_output
    ckpt = prepare_output(target, overwrite, resume) if is_main_process() else Path(target) / "checkpoint"
    wait_for_everyone(device)
    return ckpt


def end_processes(finished: bool) -> None:
    """End a launch's process group in order, at the end of a command, on every process (nothing without one).

    Left to the interpreter's exit, the group's threads are torn down while the peers' may still be running: under
    ``accelerate launch`` a process then sometimes aborted at its exit (SIGABRT, "terminate called without an active
    exception"), failing a run that had finished. When the command ``finished`` on this process, every process
    waits for the others first (they all finish the same collectives); after an error it leaves at once, since the
    others may never arrive."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        try:
            dist.barrier()
        except RuntimeError as e:  # another process left without finishing: what this one saved stays
            print(f"tailtune: warning: another process of the launch ended before this one ({str(e).strip()[:200]})",
                  file=sys.stderr)
    dist.destroy_process_group()


_exit_watch = {"registered": False, "uncaught": False}


def _note_uncaught(previous):
    def hook(kind, value, tb):
        _exit_watch["uncaught"] = True
        previous(kind, value, tb)
    return hook


def _end_at_exit() -> None:
    end_processes(finished=not _exit_watch["uncaught"])


def end_processes_at_exit() -> None:
    """Have ``end_processes`` run at the interpreter's exit too, once per process: a user's script that calls the
    Python API under ``accelerate launch`` has no ``cli.main`` to end the group. At exit a finished run cannot be told
    from a crashed one by itself, so an uncaught exception is noted on its way out (``sys.excepthook``, which runs
    before the exit handlers) and the process then leaves without waiting for the others. A command of the CLI has
    ended the group already, and the handler finds nothing to do."""
    if _exit_watch["registered"]:
        return
    _exit_watch["registered"] = True
    sys.excepthook = _note_uncaught(sys.excepthook)
    atexit.register(_end_at_exit)


def wait_for_everyone(device: str = "auto") -> None:
    """A barrier across the launched processes (nothing without a launcher)."""
    from .device import resolve_device
    Processes(resolve_device(device)).barrier()
