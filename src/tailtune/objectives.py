"""The objective axis (training losses) and the calibration axis (post-hoc score adjustments).

An objective builder returns a callable ``(logits (batch, classes), target (batch,)) -> loss``;
losses compute in float32 whatever the autocast dtype. A calibration builder returns a callable
``(logits, classifier) -> logits`` applied at prediction time only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .registry import CALIBRATIONS, OBJECTIVES, BuildContext, NoOptions, check_min

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Calibration = Callable[[torch.Tensor, Any], torch.Tensor]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): ``-(1 - p_t)^γ log p_t``, averaged over the batch."""
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)  # (batch,)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def triplet_loss(scores: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Y-Tuning's margin loss: the gold label must outscore every other label by ``margin``;
    ``max(0, margin - s_gold + s_k)`` averaged over the other labels and the batch."""
    scores = scores.float()
    gold = scores.gather(1, target[:, None])  # (batch, 1)
    hinge = (margin - gold + scores).clamp_min(0)
    others = torch.ones_like(hinge, dtype=torch.bool).scatter_(1, target[:, None], False)
    return (hinge * others).sum(1).mean() / max(1, scores.shape[1] - 1)


def eta_norm(logits: torch.Tensor, class_weight: torch.Tensor, eta: float) -> torch.Tensor:
    """η-norm (Kang et al., 2020): divide each class score ``w_c·h + b_c`` by ``‖w_c‖^η``."""
    return logits / class_weight.norm(dim=-1).clamp_min(1e-12) ** eta


def class_counts(ctx: BuildContext) -> torch.Tensor:
    """Training examples per class in label order (ones when unknown, e.g. a classifier being loaded)."""
    counts = ctx.class_counts or {}
    return torch.tensor([float(counts.get(y, 1)) for y in ctx.labels]).clamp_min(1.0)


def log_prior(ctx: BuildContext) -> torch.Tensor:
    """log of each class's share of the training examples, in label order."""
    counts = class_counts(ctx)
    return (counts / counts.sum()).log()


def effective_number_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balanced weights (Cui et al., 2019): ``(1 - β) / (1 - β^n_c)``, scaled to average 1."""
    w = (1 - beta) / (1 - beta ** counts)
    return w * len(w) / w.sum()


# ---------------------------------------------------------------- objectives

@OBJECTIVES.register("ce", NoOptions, description="cross-entropy")
def build_ce(opts: NoOptions, ctx: BuildContext) -> Loss:
    return lambda logits, target: F.cross_entropy(logits.float(), target)


@dataclass
class FocalOptions:
    focal_gamma: float = 1.0
    """γ of the focal loss (0: cross-entropy)"""

    def __post_init__(self) -> None:
        check_min(self, "focal_gamma", 0.0)


@OBJECTIVES.register("focal", FocalOptions, description="focal loss (Lin et al., 2017)")
def build_focal(opts: FocalOptions, ctx: BuildContext) -> Loss:
    return lambda logits, target: focal_loss(logits, target, opts.focal_gamma)


@dataclass
class TripletOptions:
    margin: float = 1.0
    """margin of the triplet loss: how far the gold label's score must lead every other"""

    def __post_init__(self) -> None:
        check_min(self, "margin", 0.0, strict=True)


@OBJECTIVES.register("triplet", TripletOptions, description="margin (triplet) loss of Y-Tuning")
def build_triplet(opts: TripletOptions, ctx: BuildContext) -> Loss:
    return lambda logits, target: triplet_loss(logits, target, opts.margin)


@dataclass
class LogitAdjustedOptions:
    tau: float = 1.0
    """logit adjustment: τ; the loss sees logits + τ·log(class prior) (τ=1: balanced softmax)"""

    def __post_init__(self) -> None:
        check_min(self, "tau", 0.0)


@OBJECTIVES.register("logit-adjusted", LogitAdjustedOptions, description="logit-adjusted cross-entropy (Menon et "
                     "al., 2021); τ=1 is balanced softmax (Ren et al., 2020)")
def build_logit_adjusted(opts: LogitAdjustedOptions, ctx: BuildContext) -> Loss:
    """``CE(z + τ·log π, y)``: frequent classes must win by their prior, so the trained scores ``z``
    estimate the balanced (class-conditional) posterior, which is what macro-F1 rewards."""
    prior = log_prior(ctx)
    return lambda logits, target: F.cross_entropy(logits.float() + opts.tau * prior.to(logits.device), target)


@dataclass
class ClassBalancedOptions:
    cb_beta: float = 0.9999
    """class-balanced loss: β of the effective number of examples, weights ∝ (1 - β) / (1 - β^n_c)"""

    def __post_init__(self) -> None:
        if not 0 <= self.cb_beta < 1:
            raise ConfigError(f"cb_beta={self.cb_beta!r}: must be in [0, 1)")


@OBJECTIVES.register("class-balanced", ClassBalancedOptions, description="cross-entropy re-weighted by the "
                     "effective number of examples per class (Cui et al., 2019)")
def build_class_balanced(opts: ClassBalancedOptions, ctx: BuildContext) -> Loss:
    weight = effective_number_weights(class_counts(ctx), opts.cb_beta)
    return lambda logits, target: F.cross_entropy(logits.float(), target, weight=weight.to(logits.device))


class LDAMLoss:
    """LDAM with deferred re-weighting (Cao et al., 2019): the gold class's score must lead by a
    margin ``Δ_c ∝ n_c^(-1/4)`` (the largest, for the rarest class, is ``max_margin``); from
    ``drw_start`` of training on, the loss is also weighted by class-balanced weights (β = 0.9999)."""

    def __init__(self, counts: torch.Tensor, max_margin: float, scale: float, drw_start: float) -> None:
        margins = counts ** -0.25
        self.margins = margins * (max_margin / margins.max())
        self.weights = effective_number_weights(counts, 0.9999)
        self.scale, self.drw_start, self.progress = scale, drw_start, 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        shifted = logits - F.one_hot(target, logits.shape[-1]) * self.margins.to(logits.device)
        weight = self.weights.to(logits.device) if self.progress >= self.drw_start else None
        return F.cross_entropy(self.scale * shifted, target, weight=weight)


@dataclass
class LDAMOptions:
    ldam_max_margin: float = 0.5
    """LDAM: the margin of the rarest class, in score units (the others shrink as n_c^(-1/4))"""
    ldam_scale: float = 1.0
    """LDAM: scores are multiplied by this before the softmax (the paper: 30 on raw cosines)"""
    drw_start: float = 0.8
    """LDAM: share of training after which class-balanced re-weighting starts (1: never)"""

    def __post_init__(self) -> None:
        check_min(self, "ldam_max_margin", 0.0)
        check_min(self, "ldam_scale", 0.0, strict=True)
        if not 0 <= self.drw_start <= 1:
            raise ConfigError(f"drw_start={self.drw_start!r}: must be in [0, 1]")


@OBJECTIVES.register("ldam-drw", LDAMOptions, description="LDAM margins with deferred re-weighting (Cao et al., 2019)")
def build_ldam(opts: LDAMOptions, ctx: BuildContext) -> LDAMLoss:
    return LDAMLoss(class_counts(ctx), opts.ldam_max_margin, opts.ldam_scale, opts.drw_start)


# ---------------------------------------------------------------- calibration

@CALIBRATIONS.register("none", NoOptions, description="raw class scores")
def build_no_calibration(opts: NoOptions, ctx: BuildContext) -> Calibration:
    return lambda logits, model: logits


@dataclass
class EtaNormOptions:
    eta: float = 1.1
    """η of η-norm: class scores are divided by ||w_c||^η at prediction"""

    def __post_init__(self) -> None:
        check_min(self, "eta", 0.0)


@CALIBRATIONS.register("eta-norm", EtaNormOptions, description="η-norm: scores divided by the class weight norm^η "
                       "(Kang et al., 2020)")
def build_eta_norm(opts: EtaNormOptions, ctx: BuildContext) -> Calibration:
    return lambda logits, model: eta_norm(logits, model.head.class_weights()[0].detach().float(), opts.eta)


# the τ a fitted logit adjustment chooses from: 1 is the balanced-error rule (Menon et al., 2021); above it, for
# models whose scores under-rate the rare classes beyond their prior (measured: README, "Post-hoc logit adjustment,
# fitted on dev")
ADJUST_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass
class LogitAdjustOptions:
    adjust_tau: float = 1.0
    """post-hoc logit adjustment: τ; scores minus τ·log(training class prior) (setting it turns adjust_tau_from_dev
    off unless that is set too)"""
    adjust_tau_from_dev: bool = False
    """post-hoc logit adjustment: after training, choose τ on dev for the test data adjust_target names; the chosen
    τ is saved as adjust_tau"""
    adjust_target: str = "dev"
    """post-hoc logit adjustment chosen on dev: the test data τ is chosen for. dev: distributed as the dev set (τ
    among 0, 0.25, 0.5, 0.75, 1, 1.5 and 2: the smallest within one standard error of the best dev macro-F1);
    balanced: class-balanced (the τ of least class-balanced dev log-loss, after temperature scaling on dev); auto:
    dev for a dev set you give, balanced for one carved from imbalanced training data, which says nothing of the test
    data's class shares"""

    def __post_init__(self) -> None:
        check_min(self, "adjust_tau", 0.0)
        if self.adjust_target not in ADJUST_TARGETS:
            raise ConfigError(f"adjust_target={self.adjust_target!r}: use one of {', '.join(ADJUST_TARGETS)}")


ADJUST_TARGETS = ("dev", "balanced", "auto")
BALANCED_TAUS = tuple(x / 20 for x in range(61))  # 0 to 3 on temperature-scaled scores, the balanced target's grid


def smallest_within_one_se(scored: dict[float, float], n: int) -> tuple[float, float]:
    """(value, standard error): the smallest value (a τ, a memory weight λ) whose dev macro-F1 in ``scored`` is
    within one standard error of the best one, the standard error taken as a proportion's, sqrt(F(1 - F) / n) for
    the best F on n dev examples (the one-standard-error rule of model selection; Hastie et al., The Elements of
    Statistical Learning, 7.10): the scores stay as trained unless dev shows, beyond its noise, that adjusting them
    helps."""
    best = max(scored.values())
    se = math.sqrt(best * (1 - best) / max(1, n))
    return min(t for t, f in scored.items() if f >= best - se), se


def balanced_tau(raw: torch.Tensor, gold: list[int], prior: torch.Tensor) -> tuple[float, float]:
    """(τ, temperature T) for a class-balanced target: ``T`` fits dev by log-loss (temperature scaling), then ``τ``
    in ``BALANCED_TAUS`` minimises the dev log-loss of ``raw / T - τ·log prior`` with every class weighing the same
    (each dev example weighted by 1 / its class's dev count: the dev set re-weighted to balance). Log-loss, not
    macro-F1: it moves smoothly with τ where a tail class has one or two dev examples. Returned in the units of
    ``raw`` (``τ·T``), so that ``raw - τ·log prior`` predicts the same."""
    from .priorshift import fit_temperature
    t = fit_temperature(raw, gold)
    z = raw.float() / t
    return min(BALANCED_TAUS, key=lambda tau: balanced_log_loss(z - tau * prior, gold)) * t, t


def balanced_log_loss(scores: torch.Tensor, gold: list[int]) -> float:
    """The log-loss of ``scores`` (logits) against ``gold`` with every class weighing the same: each example weighted
    by 1 / its class's count, the set re-weighted to balance."""
    target = torch.as_tensor(gold)
    w = 1 / torch.bincount(target, minlength=scores.shape[1]).float()[target]
    return float((F.cross_entropy(scores, target, reduction="none") * w).sum() / w.sum())


class LogitAdjust:
    """Scores minus τ·log(training class prior); ``fit`` chooses τ on dev scores when asked to."""

    def __init__(self, prior: torch.Tensor, tau: float, from_dev: bool, target: str = "dev",
                 own_classes: bool = False) -> None:
        self.prior, self.tau, self.from_dev, self.target = prior, tau, from_dev, target
        self.own_classes = own_classes  # the dev target's macro-F1 over the dev set's own classes only

    def __call__(self, logits: torch.Tensor, model: Any = None) -> torch.Tensor:
        return logits - self.tau * self.prior.to(logits.device)

    def fit(self, raw: torch.Tensor, gold: list[int], carved: bool = False) -> tuple[dict, str] | None:
        """Choose τ on uncalibrated dev scores ``raw`` against ``gold`` (label indices) for the target
        ``adjust_target`` names (``carved``: the dev set was carved from imbalanced training data, which ``auto``
        reads as balanced); returns the options to record and a line for the log, or None when not asked to fit."""
        if not self.from_dev or not len(gold):
            return None
        if self.target == "balanced" or (self.target == "auto" and carved):
            self.tau, t = balanced_tau(raw, gold, self.prior)
            return {"adjust_tau": self.tau}, (
                f"logit adjustment: τ = {self.tau:.3g} for a class-balanced test set, the least class-balanced dev "
                f"log-loss (temperature {t:.3g})" + ("; the dev set was carved from imbalanced training data, so it "
                                                    "says nothing of the test data's class shares: for test data "
                                                    "distributed as the training data, train with --adjust-target "
                                                    "dev" if self.target == "auto" else ""))
        from sklearn.metrics import f1_score
        labels = sorted(set(gold)) if self.own_classes else None
        scored = {tau: float(f1_score(gold, (raw - tau * self.prior).argmax(-1).tolist(), average="macro",
                                      labels=labels, zero_division=0)) for tau in ADJUST_TAUS}
        self.tau, se = smallest_within_one_se(scored, len(gold))
        return {"adjust_tau": self.tau}, (f"logit adjustment: τ = {self.tau:g} chosen on dev, the smallest within one "
                                          f"standard error ({se:.4f}) of the best macro-F1 (by τ: "
                                          + ", ".join(f"{t:g}: {f:.4f}" for t, f in scored.items()) + ")")


@CALIBRATIONS.register("logit-adjust", LogitAdjustOptions, description="post-hoc logit adjustment: scores minus "
                       "τ·log(training class prior) (Menon et al., 2021); τ fixed or chosen on dev")
def build_logit_adjust(opts: LogitAdjustOptions, ctx: BuildContext) -> Calibration:
    return LogitAdjust(log_prior(ctx), opts.adjust_tau, opts.adjust_tau_from_dev, opts.adjust_target)
