"""Devices, precision and seeds."""
from __future__ import annotations

import contextlib
import gc
import os
import random
import threading
import weakref
from typing import ContextManager

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a device that is not
    there is an error before any work starts. Under ``accelerate launch`` (``LOCAL_RANK`` set), auto
    and cuda mean the process's own GPU."""
    if isinstance(device, torch.device):
        return device
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}")  # one GPU per launched process
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: this machine has no usable CUDA GPU (torch "
                              f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                              f"use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: there are only {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type != "cpu":
        raise ConfigError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def autocast(device: torch.device | str, bf16: bool) -> ContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PRECISIONS = ("fp32", "bf16", "int8", "auto")
_probe: dict[str, str] = {}


def fastest_precision(device: torch.device | str) -> str:
    """``fp32`` or ``bf16``, whichever multiplies matrices faster here: measured once per device type
    (a 512x512 matmul probe, a few milliseconds), because machines differ (bf16 is fast on GPUs and on
    CPUs with AMX, and slower than fp32 on CPUs without it)."""
    device = torch.device(device)
    if device.type in _probe:
        return _probe[device.type]
    if device.type == "cuda":
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    else:
        import time
        a = torch.randn(512, 512)

        def rate(dtype: torch.dtype) -> float:
            x = a.to(dtype)
            x @ x  # warm up
            start = time.perf_counter()
            for _ in range(8):
                x @ x
            return time.perf_counter() - start
        choice = "bf16" if rate(torch.bfloat16) < 0.8 * rate(torch.float32) else "fp32"
    _probe[device.type] = choice
    return choice


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """A precision name, with ``auto`` resolved on ``device`` (``int8`` only on CPU)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return fastest_precision(device)
    if precision == "int8" and torch.device(device).type != "cpu":
        raise ConfigError("precision='int8' (dynamic quantisation of the linear layers) runs on the CPU only; "
                          "use bf16 on a GPU")
    return precision


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every linear layer (weights int8 with one scale per output channel,
    activations quantised on the fly); inference only, on the CPU.

    Per-channel weight scales, not one per matrix: on the R52 `auto` classifier of the throughput benchmark
    (full test set, 2,570 texts) one scale per matrix lost 0.67 macro-F1 and per-channel 0.06, at the same
    speed. PyTorch marks eager-mode quantisation deprecated in favour of torchao, whose CPU int8 path
    needs torch.compile to be fast; its warning is silenced here (the call is ours, not the user's)."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, inplace=True)


def check_compiler(device: torch.device | str) -> None:
    """The C++ compiler that inductor needs to compile for the CPU is there (callers check before loading)."""
    import shutil
    if torch.device(device).type != "cpu":
        return
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(n) for n in names):
        raise ConfigError(f"compiled inference needs a C++ compiler for torch.compile on the CPU "
                          f"({' or '.join(names)} not found): install one (e.g. apt install g++) or predict "
                          f"without --compile")


def compile_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` of an encoder for inference, shapes dynamic (any batch size and length).

    The compiled module is called under ``frozen_weights()``: inductor then folds the weights into the graph
    as constants (on the CPU it packs them for oneDNN), which is most of the speed-up, so the compiled
    encoder answers for the weights it first ran with."""
    check_compiler(next(encoder.parameters()).device)
    _make_room(encoder)
    return torch.compile(encoder, dynamic=True)


# Dynamo keeps at most ``recompile_limit`` (8) graphs per function and runs it eagerly after that, with a warning
# only. Every compiled encoder has graphs of its own (its weights are frozen into them: they are guarded by
# identity), all of one function (the model class's forward), and they stay cached after the encoder is gone. So
# a process that compiled 8 encoders, even one at a time, would predict eagerly from the 9th on, and keep the old
# ones' weights in memory. Here each live encoder gets dynamo's default allowance (the limit is one for the process,
# so it is raised for every function), and the caches are emptied when an encoder compiled since they were last
# emptied has gone (the live ones compile again at their next call).
GRAPHS_PER_ENCODER = 8  # dynamo's default recompile_limit, for one function
_compiled: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()  # compiled since the caches were last emptied
_compiled_count = 0  # how many that was, the encoders gone since included
_compiled_lock = threading.RLock()


def _make_room(encoder: torch.nn.Module) -> None:
    global _compiled_count
    with _compiled_lock:
        if encoder in _compiled:  # compiled again (a weight changed): its graphs are dropped by reset_compiled
            return
        gc.collect()  # (a model may hold reference cycles: one that is gone is freed here)
        if len(_compiled) < _compiled_count:
            reset_compiled()
        _compiled.add(encoder)
        _compiled_count += 1
        limit = GRAPHS_PER_ENCODER * _compiled_count
        if torch._dynamo.config.recompile_limit < limit:
            torch._dynamo.config.recompile_limit = limit


def reset_compiled() -> None:
    """Empty dynamo's caches (the graphs and the weights frozen into them); every compiled encoder still alive
    compiles afresh at its next call."""
    global _compiled_count
    with _compiled_lock:
        torch._dynamo.reset()
        _compiled_count = len(_compiled)


def frozen_weights() -> ContextManager:
    """Inductor's freezing for the compilations made in this block (weights as constants; inference only)."""
    import torch._inductor.config as inductor_config
    return inductor_config.patch(freezing=True)
