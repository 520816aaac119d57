"""The class shares of the texts being predicted, estimated from the classifier's own posteriors (label shift).

A classifier trained on a long tail predicts at its training prior. When the texts it predicts are distributed
otherwise (a class-balanced test set is the common case), its scores should move by ``log q - log π`` for the test
shares ``q``, which nobody knows beforehand. EM (Saerens, Latinne & Decaestecker, 2002) estimates ``q`` from the
unlabelled texts themselves: it finds the shares for which the posteriors, re-weighted by ``q / π``, average to ``q``.
It needs calibrated posteriors (Alexandari et al., 2020: EM after calibration is hard to beat), so after training
``fit_state`` fits a temperature ``T`` on dev (least negative log-likelihood) and takes as ``π`` the prior the
calibrated classifier actually predicts at on dev-distributed data, the mean of ``softmax(z / T)`` over dev; the
training label shares are not that prior once the model has been trained against its tail (a cosine head, pairs drawn
class-balanced) and push EM to degenerate shares.

It is a step over a whole set of texts, so a text's scores depend on the texts predicted with it: ``evaluate`` and
``predict`` use it when asked (``--test-prior em``), the server never.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ConfigError

TEMPERATURES = [math.exp(x / 20) for x in range(-60, 61)]  # e^-3 .. e^3, the grid the dev NLL is minimised over
MIN_TEXTS_PER_CLASS = 2
MIN_TEXTS = 20


def fit_temperature(raw: torch.Tensor, gold: list[int]) -> float:
    """The ``T`` of ``TEMPERATURES`` that minimises the negative log-likelihood of ``softmax(raw / T)`` against the
    gold label indices (temperature scaling, Guo et al., 2017)."""
    raw, target = raw.float(), torch.as_tensor(gold)
    return min(TEMPERATURES, key=lambda t: F.cross_entropy(raw / t, target).item())


def fit_state(raw: torch.Tensor, gold: list[int]) -> dict:
    """``{"temperature": T, "model_prior": π}`` from uncalibrated dev scores ``raw`` and gold label indices: ``T``
    from ``fit_temperature``, ``π`` the mean of the posteriors ``softmax(raw / T)`` over dev."""
    t = fit_temperature(raw, gold)
    return {"temperature": t, "model_prior": torch.softmax(raw.float() / t, -1).mean(0).tolist()}


def estimate_prior(probs: torch.Tensor, prior: torch.Tensor, weight: torch.Tensor | None = None,
                   max_iter: int = 1000, tol: float = 1e-7) -> torch.Tensor:
    """The class shares ``q`` of the rows of ``probs`` (posteriors calibrated under ``prior``) by EM: re-weight each
    posterior by ``q / prior``, renormalise, average (``weight``: each row counted that many times); repeat until
    ``q`` moves less than ``tol``."""
    w = torch.ones(len(probs)) if weight is None else weight.float()
    q = prior.clone()
    for _ in range(max_iter):
        post = probs * (q / prior)
        new = (w[:, None] * post / post.sum(1, keepdim=True)).sum(0) / w.sum()
        done = (new - q).abs().max().item() < tol
        q = new
        if done:
            break
    return q


def check_size(n: int, classes: int) -> None:
    """Refuse a set too small to estimate the shares of ``classes`` classes from."""
    need = max(MIN_TEXTS, MIN_TEXTS_PER_CLASS * classes)
    if n < need:
        raise ConfigError(f"--test-prior em estimates the class shares of the texts being predicted, which needs at "
                          f"least {need} texts for {classes} classes (got {n}): predict them together with the rest "
                          f"of their set, or without --test-prior em")


def adapt(raw: torch.Tensor, state: dict, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, estimated shares) for the uncalibrated scores ``raw`` of one set of texts: ``raw / T + log q - log π``
    with ``q`` estimated by EM (``weight``: see ``estimate_prior``)."""
    t, prior = float(state["temperature"]), torch.tensor(state["model_prior"], dtype=torch.float32)
    z = raw.float() / t
    q = estimate_prior(torch.softmax(z, -1), prior, weight)
    return z + q.clamp_min(1e-12).log() - prior.log(), q
