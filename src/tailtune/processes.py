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
"""
from __future__ import annotations

import os
from pathlib import Path
import torch


class Processes:
    """Rank, world size and the collective operations of the loop (trivial for one process)."""

    def __init__(self, device: torch.device) -> None:
        refuse_sharded_launch()
        self.world, self.rank, self.state = 1, 0, None
        self.device = device
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState
            self.state = PartialState(cpu=device.type == "cpu")
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

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def refuse_sharded_launch() -> None:
    """A clear error, before any training, when ``accelerate launch`` asked for FSDP or DeepSpeed: the loop
    is data-parallel (whole model per process, gradients summed), so it would silently run unsharded."""
    asked = [name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(var, "").lower() in ("1", "true", "yes")]
    if asked:
        from .errors import ConfigError
        raise ConfigError(f"launched with {asked[0]}, which tailtune does not support: its training loop is "
                          f"data-parallel (every process holds the whole model and the gradients are summed over "
                          f"processes), so the run would not be sharded. Launch without it, e.g. `accelerate launch "
                          f"--multi_gpu --num_processes N -m tailtune.cli train ...`; the encoders tailtune tunes fit "
                          f"one device (bf16 and --grad-accum lower the memory per process)")


def is_main_process() -> bool:
    """Whether this is the main process of a run (always, without a launcher)."""
    return int(os.environ.get("RANK", "0")) == 0


def prepare_output_once(target: str | Path, overwrite: bool, resume: bool, device: str = "auto") -> Path:
    """``artefacts.prepare_output`` on the main process; the others wait until it is done."""
    from .artefacts import prepare_output
    ckpt = prepare_output(target, overwrite, resume) if is_main_process() else Path(target) / "checkpoint"
    wait_for_everyone(device)
    return ckpt


def wait_for_everyone(device: str = "auto") -> None:
    """A barrier across the launched processes (nothing without a launcher)."""
    from .device import resolve_device
    Processes(resolve_device(device)).barrier()
