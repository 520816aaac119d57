"""PET and iPET (Schick & Schütze, 2021): several prompts, one model each, distilled into one classifier.

1. Every pattern-verbalizer pair (PVP: a template and its label words) gets its own prompt model
   (the ``prompt`` preset by default), weighted by its zero-shot dev accuracy *before* training
   (PET's weighting: a PVP that already fits the task counts more), then fine-tuned on the labelled set.
2. The models' class scores on the unlabelled texts are averaged with those weights, and
   ``softmax(scores / T)`` with T = 2 gives soft labels.
3. The final classifier (any preset; ``auto`` by default) learns the soft labels of the unlabelled
   texts and the one-hot labels of the labelled ones with a KL objective at the same temperature
   (``TailtuneClassifier.fit(..., soft_labels=...)``); it is an ordinary classifier, saved as one.

iPET (``generations`` > 0): in generation g every PVP's model is trained anew on the labelled set
plus unlabelled texts labelled by the ensemble of the *other* PVPs' models of the previous
generation, their most confident ones, ``n_c · (growth^g − 1)`` per class (``n_c``: the class's
labelled count, so the class proportions of the labelled set are kept; ``growth`` = 5 as in the
paper). Every generation's models take the optimisation steps of generation 0's, evaluated at the same steps
(``generation_budget="steps"``, as PET's reference scripts, which give every generation the same ``--max_steps``):
the grown sets (5x and 25x the labelled set) are sampled, not passed over 5x and 25x as often.
``generation_budget="epochs"`` trains the same epochs over the grown set instead (tailtune's earlier iPET: 8 to
27x PET's time on the 16-shot sets). With ``mlm_weight`` > 0 every pattern's model also learns PET's auxiliary
masked-LM task on the unlabelled texts (``(1 - w) · task loss + w · MLM loss``, PET: w = 1e-4;
``stages.lm.MaskedLMAux``).
``tailtune adapt-lm`` adapts the backbone on unlabelled text beforehand, a complement.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .errors import ConfigError


GENERATION_BUDGETS = ("steps", "epochs")
PATTERN_WEIGHTS = ("zero-shot", "uniform")  # how the pattern models' scores are combined (run_pet)


@dataclass
class Pattern:
    """A pattern-verbalizer pair: a template with {text} and {mask}, and label -> word(s) (none: label names)."""

    template: str
    verbalizer: Mapping[str, Any] | None = None


def _zero_shot_accuracy(clf: Any, labels: list[str], dev: Any) -> float:
    from .model import build_classifier
    from .training import predict_logits
    model = build_classifier(clf.config, labels, clf.backbone, clf.verbalizer)
    scores = predict_logits(model, model.encode(list(dev.texts), dev.texts_b))
    gold = torch.tensor([labels.index(y) for y in dev.labels])
    return float((scores.argmax(-1) == gold).float().mean())


def _confident(probs: np.ndarray, labels: list[str], per_class: dict[str, int]) -> tuple[list[int], list[str]]:
    """The most confident unlabelled rows per predicted class, at most ``per_class[c]`` each."""
    pred = probs.argmax(1)
    rows, ys = [], []
    for c, y in enumerate(labels):
        idx = np.flatnonzero(pred == c)
        idx = idx[np.argsort(-probs[idx, c], kind="stable")][:per_class.get(y, 0)]
        rows += idx.tolist()
        ys += [y] * len(idx)
    return rows, ys


def run_pet(train: Any, dev: Any, unlabeled: list[str], patterns: list[Pattern], backbone: str | None = None, *,
            preset: str = "prompt", train_config: Any = None, final_preset: str = "auto",
            final_train_config: Any = None, final_backbone: str | None = None, max_length: int = 128,
            temperature: float = 2.0,
            generations: int = 0, growth: float = 5.0, mlm_weight: float = 0.0, generation_budget: str = "steps",
            pattern_weights: str = "zero-shot", log: Callable[[str], None] = print) -> dict:
    """PET (``generations=0``) or iPET; returns {"classifier": the distilled TailtuneClassifier, "patterns":
    per-PVP weight (zero-shot dev accuracy) and dev accuracy after training, "ensemble_dev_accuracy": ...}.

    ``pattern_weights``: how the models' scores are combined, as PET's reference code offers: ``zero-shot`` (its
    weighted mean: each model by its pattern's dev accuracy before training) or ``uniform`` (its plain mean; where the
    zero-shot accuracies are all near chance, e.g. with many classes, they weigh the models by noise).

    The pattern models need ``backbone``'s masked-LM head; the final classifier can sit on another backbone
    (``final_backbone``, default: the same), e.g. a sentence encoder without an MLM head."""
    from .api import TailtuneClassifier
    from .config import preset_train_config
    from .data import TextDataset, check_labels, label_space
    if len(patterns) < 1:
        raise ConfigError("PET needs one or more patterns (template + verbalizer)")
    if dev is None or not len(dev):
        raise ConfigError("PET weights its patterns by dev accuracy: give a dev split (--dev)")
    if not unlabeled:
        raise ConfigError("PET distils on unlabelled texts: give some (--unlabeled)")
    if temperature <= 0 or generations < 0 or growth <= 1 or not 0 <= mlm_weight < 1:
        raise ConfigError(f"need temperature > 0, generations >= 0, growth > 1 and 0 <= mlm_weight < 1; got "
                          f"{temperature}, {generations}, {growth}, {mlm_weight}")
    if pattern_weights not in PATTERN_WEIGHTS:
        raise ConfigError(f"pattern_weights={pattern_weights!r}: choose one of {', '.join(PATTERN_WEIGHTS)}")
    if generation_budget not in GENERATION_BUDGETS:
        raise ConfigError(f"generation_budget={generation_budget!r}: choose one of {', '.join(GENERATION_BUDGETS)}")
    labels = label_space(train.labels)
    check_labels(dev, labels, "dev")
    counts = {y: list(train.labels).count(y) for y in labels}

    member_config = train_config or preset_train_config(preset)

    def member(p: Pattern, config: Any = member_config) -> Any:  # (checks the pattern before any training)
        return TailtuneClassifier(preset, backbone, template=p.template, verbalizer=p.verbalizer,
                                  max_length=max_length, train_config=config)

    members = [member(p) for p in patterns]
    if final_backbone is not None:  # a wrong name or path fails now, not after the pattern models trained
        from .backbone import load_tokenizer
        load_tokenizer(final_backbone)
    final = TailtuneClassifier(final_preset, backbone if final_backbone is None else final_backbone,
                               max_length=max_length, train_config=final_train_config or preset_train_config(final_preset))
    if pattern_weights == "uniform":
        weights = [1.0] * len(members)
    else:
        weights = [_zero_shot_accuracy(m, labels, dev) for m in members]
        log("PET: pattern weights (zero-shot dev accuracy) " + ", ".join(f"{w:.3f}" for w in weights))
    if not sum(weights):  # no pattern gets anything right before training: weigh them alike
        weights = [1.0] * len(weights)
    unl = TextDataset(list(unlabeled), [labels[0]] * len(unlabeled))

    def scores_of(models: list[Any], which: list[int]) -> np.ndarray:
        total = sum(weights[k] for k in which) or 1.0
        return sum(weights[k] * models[k].decision_function(unl) for k in which) / total

    aux = {"unlabeled": list(unlabeled), "mlm_weight": mlm_weight} if mlm_weight else {}
    for k, m in enumerate(members):
        m.fit(train, dev=dev, **aux)
        log(f"PET: pattern {k + 1}/{len(members)} trained ({patterns[k].template!r})")
    grown_config = member_config
    if generations and generation_budget == "steps":
        first = members[0].train_result_  # (every generation-0 model: the same labelled set and settings)
        grown_config = replace(member_config, steps=first.planned_steps, eval_every=member_config.eval_every or (
            None if member_config.eval_times else first.steps_per_epoch))
        log(f"iPET: every generation trains {first.planned_steps} steps, as generation 0")
    for g in range(1, generations + 1):  # iPET
        need = {y: int(round(n * (growth ** g - 1))) for y, n in counts.items()}
        new = []
        for k, p in enumerate(patterns):
            others = [j for j in range(len(members)) if j != k] or [k]
            probs = torch.softmax(torch.as_tensor(scores_of(members, others)), -1).numpy()
            rows, ys = _confident(probs, labels, need)
            grown = TextDataset(list(train.texts) + [unlabeled[i] for i in rows], list(train.labels) + ys)
            new.append(member(p, grown_config).fit(grown, dev=dev, **aux))
        members = new
        log(f"iPET: generation {g} trained on {sum(need.values())} pseudo-labelled texts per pattern at most")
    gold = np.array([labels.index(y) for y in dev.labels])
    dev_scores = [m.decision_function(dev) for m in members]
    dev_acc = [float((s.argmax(1) == gold).mean()) for s in dev_scores]
    ensemble_dev = sum(w * s for w, s in zip(weights, dev_scores))
    ensemble_acc = float((ensemble_dev.argmax(1) == gold).mean())
    soft = torch.softmax(torch.as_tensor(scores_of(members, list(range(len(members))))) / temperature, -1).numpy()
    onehot = np.eye(len(labels))[[labels.index(y) for y in train.labels]]
    texts = list(unlabeled) + list(train.texts)
    hard = [labels[i] for i in soft.argmax(1)] + list(train.labels)
    if set(hard) != set(labels):
        raise ConfigError("the ensemble never predicts some classes on the unlabelled texts; give more unlabelled "
                          "text or better patterns")
    final.fit(texts, hard, dev=dev, soft_labels=np.concatenate([soft, onehot]), temperature=temperature)
    log(f"PET: final {final_preset} classifier distilled on {len(unlabeled)} unlabelled + {len(train)} labelled texts")
    return {"classifier": final, "labels": labels, "ensemble_dev_accuracy": ensemble_acc, "mlm_weight": mlm_weight,
            "pattern_weights": pattern_weights,
            **({"generations": generations, "generation_budget": generation_budget} if generations else {}),
            "final_backbone": final.model_.backbone_name,
            "patterns": [{"template": p.template, "weight": w, "dev_accuracy": a}
                         for p, w, a in zip(patterns, weights, dev_acc)]}
