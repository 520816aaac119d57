"""A moving average of the trained weights, which the training loop evaluates and keeps (``--weight-average``)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    """An exponential moving average of the trained parameters (``torch.optim.swa_utils``' EMA update). Its decay
    is 1 - 1 / (share x planned steps), warmed up as min(decay, (1 + n) / (10 + n)) after n steps, so that the
    average does not stay near the starting point for the first time constant."""

    def __init__(self, params: list[torch.Tensor], share: float, total: int) -> None:
        self.params, self.decay = params, 1.0 - 1.0 / max(1.0, share * total)
        self.average = [p.detach().clone() for p in params]

    def update(self, steps_before: int) -> None:
        decay = min(self.decay, (1 + steps_before) / (10 + steps_before))
        get_ema_multi_avg_fn(decay)(self.average, [p.detach() for p in self.params], None)

    def load(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for a, s in zip(self.average, saved):
                a.copy_(s)

    @contextmanager
    def in_model(self) -> Iterator[None]:
        """The model's parameters hold the average inside the block, and their own values again after it."""
        own = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.average):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, o in zip(self.params, own):
                    p.copy_(o)
