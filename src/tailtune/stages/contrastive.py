"""A contrastive stage in the spirit of SetFit: sentence-pair tuning of the body, before any head trains.

Pairs of training texts are labelled 1 (same class) or 0 (different classes); the body learns to
make the cosine of their read vectors (the classifier's readout, mean pooling on a sentence
encoder) match the label (SetFit's ``CosineSimilarityLoss``; ``contrastive_loss="supcon"`` uses the supervised
contrastive loss over each batch's texts instead, measured lower on the 16-shot sets: README). SetFit draws its anchors uniformly
over examples, so on long-tailed data nearly every pair comes from the head classes; here anchors
are drawn uniformly over *classes* by default, so a class of 3 examples gets as many pairs as one
of 3,000. The number of pairs follows SetFit (two per example and iteration) but is capped, so the
stage's cost does not grow without bound with the data; ``contrastive_distinct`` caps it further at the
number of distinct pairs of training texts (SetFit 1.x's default), cheaper on the smallest sets at a
measured cost in accuracy; so does ``contrastive_read_once``, which reads each distinct text of a batch once.
Below ``contrastive_head_only_below`` examples per class, the fine-tuning after the stage trains the head alone,
on the frozen tuned body (SetFit's recipe: the body learns from pairs, the classifier from fixed features,
computed once), and the saved classifier holds the tuned body.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..data import per_class
from ..errors import ConfigError
from ..batch import collate
from ..loop import TrainConfig, run
from ..registry import STAGES, TRAINS, check_choice, check_min


@dataclass
class ContrastiveOptions:
    contrastive_iterations: int = 20
    """contrastive stage: pairs per training example and epoch, one positive and one negative each (SetFit's
    num_iterations)"""
    contrastive_max_pairs: int = 8000
    """contrastive stage: at most this many pairs per epoch"""
    contrastive_distinct: bool = False
    """contrastive stage: at most as many pairs per epoch as there are distinct pairs of training texts, N(N-1)/2
    (SetFit 1.x's default; faster on the smallest sets but measured 1.8 points lower on 16-shot SST-2, README)"""
    contrastive_read_once: bool = False
    """contrastive stage: read each distinct text of a batch once for all its pairs, instead of both texts of every
    pair (0.86x the time on 16-shot sets, 0.4 points lower on average over 35 runs, README)"""
    contrastive_head_only_below: float = 0.0
    """contrastive stage: when it runs and the training set has fewer than this many examples per class on average,
    the fine-tuning after it trains only the head, on the frozen tuned body (SetFit's recipe; features computed
    once). 0: never. The `auto` preset sets 17: up to 16-shot (README)"""
    contrastive_every_exit: bool = False
    """contrastive stage, with an early-exit head trained jointly: the pair loss at every exit's layer, weighted by
    depth as the exits' losses are (PABEE), instead of the last layer only. Measured on 16-shot SST-2 (3 seeds): 2.0
    points lower at full depth and no better at equal depth, so off by default (README, "Early exit")"""
    contrastive_epochs: float = 1.0
    """contrastive stage: passes over the pairs"""
    contrastive_lr: float = 2e-5
    """contrastive stage: learning rate of the body (and task modules)"""
    contrastive_batch_size: int = 16
    """contrastive stage: pairs per step"""
    contrastive_loss: str = "cosine"
    """contrastive stage: the loss on a batch of pairs: cosine (SetFit's CosineSimilarityLoss: each pair's cosine
    regressed on 1 or 0) or supcon (the supervised contrastive loss of Khosla et al., 2020, over every text the
    batch read: each is pulled towards all the batch's texts of its class against all the others)"""
    contrastive_temperature: float = 0.07
    """contrastive stage, --contrastive-loss supcon: the softmax temperature on cosines (Khosla et al.'s 0.07)"""
    contrastive_sampling: str = "class"
    """contrastive stage: draw anchors uniformly over classes (class; long-tail aware) or over examples (example;
    as SetFit)"""
    contrastive_pairs: str = "all"
    """contrastive stage: which training examples its pairs are drawn from: all of them (all), or only the observed
    ones (observed), so that label descriptions (--descriptions) join the head's training and prototypes but not
    the pairs"""
    contrastive_below: float = 0.0
    """contrastive stage: run only when the training set has fewer than this many examples per class on average
    (0: always). The `auto` preset sets 64, the few-shot regime where pair tuning pays (README)"""

    def __post_init__(self) -> None:
        for name in ("contrastive_iterations", "contrastive_max_pairs", "contrastive_batch_size"):
            check_min(self, name, 1)
        check_min(self, "contrastive_epochs", 0.0, strict=True)
        check_min(self, "contrastive_lr", 0.0, strict=True)
        check_min(self, "contrastive_temperature", 0.0, strict=True)
        check_min(self, "contrastive_below", 0.0)
        check_min(self, "contrastive_head_only_below", 0.0)
        check_choice(self, "contrastive_sampling", ("class", "example"))
        check_choice(self, "contrastive_pairs", ("all", "observed"))
        check_choice(self, "contrastive_loss", tuple(LOSS_NAMES))


# what the stage's log line calls each loss
LOSS_NAMES = {"cosine": "cosine pair loss", "supcon": "supervised contrastive loss"}


def sample_pairs(labels: list[str], n: int, rng: random.Random, by: str = "class") -> list[tuple[int, int, float]]:
    """``n`` (i, j, same-class) pairs, half positive and half negative; anchors uniform over classes
    (``by="class"``) or over examples (``by="example"``)."""
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    classes = sorted(by_class)
    twice = [c for c in classes if len(by_class[c]) > 1]
    pairs = []
    for k in range(n):
        if by == "class":
            c = rng.choice(twice if k % 2 == 0 and twice else classes)
            a = rng.choice(by_class[c])
        else:
            a = rng.randrange(len(labels))
            c = labels[a]
        if k % 2 == 0 and len(by_class[c]) > 1:  # positive
            b = a
            while b == a:
                b = rng.choice(by_class[c])
            pairs.append((a, b, 1.0))
        else:  # negative: another class, uniform over classes (or over examples)
            if by == "class":
                other = rng.choice([d for d in classes if d != c])
                b = rng.choice(by_class[other])
            else:
                b = rng.randrange(len(labels))
                while labels[b] == c:
                    b = rng.randrange(len(labels))
            pairs.append((a, b, 0.0))
    return pairs


def n_pairs(n: int, opts: ContrastiveOptions) -> int:
    """Pairs per epoch for ``n`` training texts: SetFit's two per example and iteration, capped."""
    pairs = min(opts.contrastive_max_pairs, 2 * opts.contrastive_iterations * n)
    return max(1, min(pairs, n * (n - 1) // 2)) if opts.contrastive_distinct else pairs


class PairJob:
    """The loop's job for the contrastive stage: the body (and task modules) train, the head does not."""

    def __init__(self, model: Any, examples: Any, opts: ContrastiveOptions, cfg: TrainConfig) -> None:
        if opts.contrastive_pairs == "observed" and examples.written:
            examples = examples.subset([i for i, w in enumerate(examples.written) if not w])
        if len(set(examples.labels)) < 2:
            raise ConfigError("the contrastive stage needs two or more classes"
                              + (" among the observed examples (--contrastive-pairs observed)"
                                 if opts.contrastive_pairs == "observed" else ""))
        self.model, self.opts, self.cfg = model, opts, cfg
        self.device = next(model.parameters()).device
        self.encoded = model.encode(examples.texts, examples.texts_b)
        self.labels = list(examples.labels)
        classes = {y: k for k, y in enumerate(sorted(set(self.labels)))}
        self.label_ids = [classes[y] for y in self.labels]
        self.n_pairs = n_pairs(len(examples), opts)
        self.micro_batches = math.ceil(self.n_pairs / opts.contrastive_batch_size)
        self.settings = {"stage": "contrastive", "options": vars(opts)}
        weights = model.head.layer_weights() if opts.contrastive_every_exit else None
        self.layer_weights = None if weights is None else weights.to(self.device)
        self.total_steps = 0

    def batches(self, epoch: int) -> list[list[tuple[int, int, float]]]:
        pairs = sample_pairs(self.labels, self.n_pairs, random.Random(self.cfg.seed * 7 + epoch),
                             self.opts.contrastive_sampling)
        size = self.opts.contrastive_batch_size
        return [pairs[s:s + size] for s in range(0, len(pairs), size)]

    def _read(self, idx: list[int]) -> torch.Tensor:
        batch = collate([self.encoded[i] for i in idx], self.model.tokenizer.pad_token_id, self.device)
        hidden = self.model.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                     batch.get("soft_positions"))
        x, _ = self.model.readout(hidden, batch["attention_mask"], batch["position"])
        if x.dim() == 3:  # a head that reads every layer (early exit): the layers its weights name, else the last
            return x[:, 1:] if self.layer_weights is not None else x[:, -1]
        return x

    def loss(self, pairs: list[tuple[int, int, float]], step: int) -> torch.Tensor:
        """SetFit's loss on a batch of pairs: both texts of every pair are read (each occurrence with its own
        dropout draw), or with ``contrastive_read_once`` each distinct text once, its vector serving every pair it
        is in (the same loss without dropout; fewer passes on small sets, at a measured cost in accuracy)."""
        from ..device import autocast
        with autocast(self.device, self.cfg.bf16):
            if self.opts.contrastive_read_once:
                texts = list(dict.fromkeys(i for p in pairs for i in p[:2]))  # distinct, in order of first use
                row = {i: r for r, i in enumerate(texts)}
                x = self._read(texts)
                a = x[torch.tensor([row[p[0]] for p in pairs], device=x.device)]
                b = x[torch.tensor([row[p[1]] for p in pairs], device=x.device)]
            else:
                a, b = self._read([p[0] for p in pairs]), self._read([p[1] for p in pairs])
        if self.opts.contrastive_loss == "supcon":
            return self._supcon(a, b, pairs)
        cos = F.cosine_similarity(a.float(), b.float(), dim=-1)  # (pairs,) or (pairs, layers)
        target = torch.tensor([p[2] for p in pairs], device=cos.device)
        if self.layer_weights is None:
            return F.mse_loss(cos, target)
        per_layer = ((cos - target[:, None]) ** 2).mean(0)
        return (per_layer * self.layer_weights).sum()

    def _supcon(self, a: torch.Tensor, b: torch.Tensor, pairs: list[tuple[int, int, float]]) -> torch.Tensor:
        """Supervised contrastive loss (Khosla et al., 2020, the L_out form) over the 2P texts of P pairs: every text
        is an anchor; its positives are the batch's other texts of its class (the other read of the same text
        included); the softmax runs over all the batch's other texts, at ``contrastive_temperature``."""
        x = F.normalize(torch.cat([a, b]).float(), dim=-1)
        ids = [self.label_ids[p[0]] for p in pairs] + [self.label_ids[p[1]] for p in pairs]
        y = torch.tensor(ids, device=x.device)
        sim = x @ x.T / self.opts.contrastive_temperature
        self_mask = torch.eye(len(y), dtype=torch.bool, device=x.device)
        log_prob = sim.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
        positive = (y[:, None] == y[None, :]) & ~self_mask
        count = positive.sum(1)
        anchors = count > 0
        if not anchors.any():  # no two texts of a class in the batch (one example per class): nothing to pull
            return (x * 0.0).sum()
        mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1)[anchors] / count[anchors]
        return -mean_log_prob.mean()

    def param_roles(self) -> dict[str, str]:
        return {n: r for n, r in self.model.param_roles().items() if r != "head"}


class ContrastiveStage:
    """Runs before the main fine-tuning (which then starts its head, e.g. from prototypes, on the tuned body)."""

    when = "before"

    def __init__(self, opts: ContrastiveOptions) -> None:
        self.opts = opts

    def applies(self, examples: Any) -> bool:
        """Whether the stage runs on these training examples (``contrastive_below``)."""
        return not (self.opts.contrastive_below and per_class(examples) >= self.opts.contrastive_below)

    def fine_tune_roles(self, examples: Any) -> tuple[str, ...] | None:
        """What the fine-tuning after the stage may train (``train(roles=...)``; None: the run's own trainable set)."""
        head_only = self.applies(examples) and per_class(examples) < self.opts.contrastive_head_only_below
        return ("head",) if head_only else None

    def run(self, model: Any, examples: Any, cfg: TrainConfig, evaluate: Callable[[], dict] | None = None,
            log: Callable[[str], None] | None = None) -> float:
        o = self.opts
        if not self.applies(examples):
            if log:
                log(f"contrastive stage: skipped, {per_class(examples):.0f} training examples per class on average "
                    f"(it runs below {o.contrastive_below:g}; --contrastive-below 0 runs it always)")
            return 0.0
        tc = TrainConfig(epochs=o.contrastive_epochs, batch_size=o.contrastive_batch_size, lr=o.contrastive_lr,
                         module_lr=cfg.module_lr and o.contrastive_lr, seed=cfg.seed, device=cfg.device, bf16=cfg.bf16,
                         progress=cfg.progress, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
        job = PairJob(model, examples, o, tc)
        if log:
            log(f"contrastive stage: {job.n_pairs} pairs per epoch ({o.contrastive_sampling}-balanced anchors"
                f"{', observed examples only' if o.contrastive_pairs == 'observed' else ''}), "
                f"{o.contrastive_epochs:g} epoch(s), lr {o.contrastive_lr:g}, {LOSS_NAMES[o.contrastive_loss]}")
        result = run(job, tc)
        if log:
            log(f"contrastive stage: done in {result.seconds:.0f} s, last batch loss {result.history[-1]['loss']:.4f}"
                + ("; then only the head trains, on the frozen tuned body" if self.fine_tune_roles(examples) else ""))
        return result.seconds


def _check(config: Any) -> None:
    # without options (config.of), only the axes are checked: whether a preset's stage applies to them
    opts = config.of("stage:contrastive") if hasattr(config, "of") else None
    joint_exits = config.head == "early-exit" and opts is not None and config.of("head").exit_training == "joint"
    if opts is not None and opts.contrastive_every_exit and not joint_exits:
        raise ConfigError("contrastive_every_exit scores the pairs at every exit's layer, so it needs joint early exit: "
                          "--head early-exit --exit-training joint (or the pabee preset), or drop "
                          "--contrastive-every-exit")
    if opts is not None and opts.contrastive_every_exit and opts.contrastive_loss != "cosine":
        raise ConfigError("contrastive_every_exit weights the pair loss by layer, which only the cosine loss does; "
                          "use --contrastive-loss cosine or drop --contrastive-every-exit")
    if TRAINS.get(config.trains).trait("trains_body"):
        return
    raise ConfigError(f"the contrastive stage tunes the body, but trains={config.trains!r} freezes it; choose what "
                      f"trains (e.g. --trains all or --trains lora), or drop the stage (--stages none)")


@STAGES.register("contrastive", ContrastiveOptions, description="sentence-pair tuning of the body on pairs of "
                 "training texts (SetFit-style; anchors balanced over classes) before the head trains",
                 check=_check, when="before",
                 neutral_options={"contrastive_pairs": "all", "contrastive_loss": "cosine",
                                  "contrastive_temperature": 0.07})  # (added after runs with the stage were recorded)
def build_contrastive(opts: ContrastiveOptions) -> ContrastiveStage:
    return ContrastiveStage(opts)
