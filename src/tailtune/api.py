"""A scikit-learn style estimator over the lower-level pieces."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from .artefacts import save_classifier
from .config import PRESETS, ClassifierConfig, config_from_preset, preset_train_config
from .data import (TextDataset, check_labels, check_trainable, class_stats, label_space, per_class, stratified_split,
                   texts_of, with_descriptions)
from .device import resolve_device, set_seed
from .errors import ConfigError, DataError
from .loop import TrainConfig
from .metrics import long_tail_report, near_balanced, weight_norms
from .model import Classifier, build_classifier
from .priorshift import adapt, check_size, fit_state
from .processes import Processes
from .early_exit import predict_early_exit
from .training import cached_features, data_hash, predict_logits, train


def _as_dataset(X: Any, y: Iterable | None = None, X_b: Iterable | None = None,
                labelled: str | None = None) -> TextDataset:
    """A TextDataset as given, or one of texts ``X``, labels ``y`` and second texts ``X_b`` (``labelled``: the name of
    the method that needs y, for its message)."""
    if isinstance(X, TextDataset):
        if y is not None or X_b is not None:
            raise DataError("give a TextDataset, or texts X with labels y; not a TextDataset and y or X_b")
        return X
    X = texts_of(X)
    if y is None and labelled:
        raise DataError(f"{labelled} needs labels: {labelled}(texts, labels), one label per text, or "
                        f"{labelled}(TextDataset)")
    if y is not None and (isinstance(y, (str, bytes)) or not isinstance(y, Iterable)):
        raise DataError(f"y must be a list of labels, one per text; got a {type(y).__name__}: {str(y)[:40]!r}")
    return TextDataset(X, list(y) if y is not None else [""] * len(X),
                       texts_of(X_b, "X_b") if X_b is not None else None)


COMPILE_AND_EXIT = ("compiled inference and early exit do not combine (early exit runs the encoder layer by layer): "
                    "use one or the other")


def check_unlabeled(config: ClassifierConfig, train_ds: TextDataset, mlm_weight: float) -> None:
    """Refuse (before anything loads) unlabelled texts this configuration has no use for: an entry takes them when its
    ``takes_unlabeled(config, mlm_weight)`` trait says so (FastBERT's self-distillation of early exits; PET's
    auxiliary masked-LM loss through a verbalizer on the MLM head, ``mlm_weight`` > 0)."""
    if train_ds.texts_b is not None:
        raise ConfigError("unlabelled texts are single texts, but this training data pairs two texts per "
                          "example; train without unlabelled texts")
    mlm_head = config.entry("head").trait("takes_unlabeled") is not None
    if mlm_head and mlm_weight and not 0 < mlm_weight < 1:
        raise ConfigError(f"the auxiliary MLM weight must be between 0 and 1 (PET: 1e-4), got {mlm_weight}")
    if not config.takes_unlabeled(mlm_weight):
        raise ConfigError(f"this classifier has no use for unlabelled texts (head={config.head!r}"
                          f"{', MLM weight 0' if mlm_head else ''}). They feed PET's "
                          f"auxiliary MLM loss (a classifier on the backbone's MLM head, e.g. preset 'prompt', "
                          f"with an MLM weight above 0) and FastBERT's self-distillation of early exits "
                          f"(preset 'fastbert'); train without them or with one of those")


class TailtuneClassifier:
    """Tune a BERT-family encoder into a classifier with one of the named presets.

    >>> clf = TailtuneClassifier("prompt", template="{text} This is {mask} news .")
    >>> clf.fit(texts, labels).predict(["new text"])

    Keywords override the preset: an axis (``trains="lora"``, ``calibration="eta-norm"``) or an
    option of a chosen entry (``lora_r=4``); an option of an entry that is not chosen is an error
    (``tailtune axes`` lists them all). Labels are strings (other labels are turned into strings).
    Learned attributes: ``model_``, ``labels_``, ``class_stats_``, ``train_result_``, ``fitted_options_`` (the options
    that ``auto`` values chose from the training data).
    """

    def __init__(self, preset: str = "auto", backbone: str | None = None, *,
                 config: ClassifierConfig | None = None, template: str | None = None,
                 verbalizer: Mapping[str, Any] | None = None, max_length: int | None = None,
                 train_config: TrainConfig | None = None, theta: float = 0.65, dev_fraction: float = 0.1,
                 trust_remote_code: bool = False, **options: Any) -> None:
        self.preset = preset
        self.backbone = backbone
        if config is not None:
            if options or template is not None or max_length is not None:
                raise ConfigError("pass either a ClassifierConfig (config=...) or preset options, not both")
            self.config = config
        else:
            if template is not None:
                options["template"] = template
            self.config = config_from_preset(preset, max_length=max_length, **options)
        if verbalizer is not None and not self.config.uses_label_words:
            raise ConfigError(f"a verbalizer gives label words, but head={self.config.head!r} uses none; use a head "
                              f"that does (verbalizer, label-decoder) or leave the verbalizer out")
        self.verbalizer = dict(verbalizer) if verbalizer is not None else None
        self.train_config = train_config or preset_train_config(preset if preset in PRESETS else "cls")
        if not 0 < theta <= 1 or not 0 < dev_fraction < 1:
            raise ConfigError(f"need 0 < theta <= 1 and 0 < dev_fraction < 1, got {theta} and {dev_fraction}")
        self.theta = theta
        self.dev_fraction = dev_fraction
        self.trust_remote_code = trust_remote_code

    # ------------------------------------------------------------------ fit
    def fit(self, X: Any, y: Iterable | None = None, X_b: Iterable | None = None, dev: TextDataset | None = None, *,
            checkpoint_dir: str | Path | None = None, resume: bool = False,
            log: Callable[[str], None] | None = None,
            on_evaluate: Callable[[int, dict], None] | None = None, soft_labels: Any = None,
            temperature: float = 2.0, unlabeled: Iterable[str] | None = None,
            mlm_weight: float = 1e-4, descriptions: Mapping[str, Any] | None = None,
            description_copies: int = 4) -> "TailtuneClassifier":
        """Train on texts ``X`` (or a TextDataset) and labels ``y``; dev is carved if not given.

        With ``checkpoint_dir`` a resumable checkpoint is written at every dev evaluation (or every
        ``save_every`` steps); ``resume=True`` continues from it. ``log`` receives a line per evaluation,
        ``on_evaluate(step, dev_metrics)`` the metrics (an exception it raises stops training, e.g. pruning).
        ``soft_labels`` (texts, classes; columns in sorted label order, as ``labels_``) distils them instead of
        learning ``y`` (KL at ``temperature``; PET's final classifier); it needs ``dev``. ``unlabeled`` texts add
        PET's auxiliary masked-LM loss through the classifier's MLM head (prompt presets), weighted
        ``mlm_weight`` against the task loss (PET: 1e-4), and join the training texts of FastBERT's
        self-distillation of early exits (preset ``fastbert``); a classifier with neither refuses them.
        ``descriptions`` (label -> a text or list of texts, e.g. "It was great .") join the training examples,
        ``description_copies`` times each, after the dev split (dev keeps only real texts); the class statistics
        (head/tail groups, the class priors of a logit adjustment) stay the data's own; with ``soft_labels`` they
        join as one-hot rows, and they never count towards a stage's examples per class (the regime bounds).
        """
        train_ds = _as_dataset(X, y, X_b, labelled="fit")
        check_trainable(train_ds)
        self.text_pairs_, self.column_names_ = train_ds.texts_b is not None, train_ds.column_names
        if soft_labels is not None and dev is None:
            raise ConfigError("fit with soft_labels needs an explicit dev set (a carved one would split the soft "
                              "labels apart from their texts)")
        if soft_labels is not None and len(soft_labels) != len(train_ds):  # (before any stage runs)
            raise DataError(f"soft labels: need one row of class probabilities per training example "
                            f"({len(train_ds)}), got {len(soft_labels)} rows")
        carved = dev is None
        if carved:
            train_ds, dev = stratified_split(train_ds, self.dev_fraction, self.train_config.seed)
        labels = label_space(train_ds.labels)
        if len(labels) < 2:
            raise DataError(f"{train_ds.source}: training data has a single class ({labels[0]!r}); a classifier "
                            f"needs two or more")
        check_labels(dev, labels, "dev")
        if log and len(dev):  # what the checkpoint and τ are chosen on
            log(f"dev: {len(dev)} texts of {len(set(dev.labels))} of the {len(labels)} classes, "
                + (f"carved from the training data (a share of {self.dev_fraction:g} of each class of 3 texts or "
                   f"more), which keeps {len(train_ds)} to train" if carved else "given"))
        if not len(dev):
            why = ("none was left after carving (classes of fewer than 3 texts give none, and carved texts that also "
                   "occur in the training part are left out)" if carved else "the dev set given is empty")
            warnings.warn(f"{train_ds.source}: no dev example: {why}. Training keeps its last step (no checkpoint is "
                          f"chosen on dev) and nothing is fitted on dev (a logit adjustment keeps the τ it was given, "
                          f"--test-prior em is unavailable); give a dev set (--dev) with a few texts of every class",
                          stacklevel=2)
        stats = class_stats(train_ds.labels, self.theta)
        self.descriptions_ = None
        if descriptions:  # (after the dev split and the statistics: they are the data's own)
            train_ds = with_descriptions(train_ds, descriptions, description_copies)
            self.descriptions_ = {"copies": description_copies,
                                  "texts": {str(y): [d] if isinstance(d, str) else list(d)
                                            for y, d in descriptions.items()}}
        unlabeled = None if unlabeled is None else list(unlabeled)
        if unlabeled is not None:  # (refused before the backbone loads, which may mean a download)
            check_unlabeled(self.config, train_ds, mlm_weight)
        procs = Processes(resolve_device(self.train_config.device))  # under `accelerate launch`: a share each
        set_seed(self.train_config.seed)
        observed = per_class(train_ds)
        config = self.config.fitted(unlabeled=0 if unlabeled is None else len(unlabeled),  # ("auto" options)
                                    per_class=observed, classes=len(labels))
        self.fitted_options_ = {k: v for k, v in config.options.items() if self.config.options.get(k) != v}
        if log is not None and self.fitted_options_:
            log("chosen from the training data (" + f"{observed:.1f} examples per class on average"
                + (f", {len(unlabeled):,} unlabelled texts" if unlabeled else "") + "): "
                + ", ".join(f"{k}={v}" for k, v in self.fitted_options_.items()))
        model = build_classifier(config, labels, self.backbone, self.verbalizer, self.trust_remote_code,
                                 class_counts=stats["counts"])
        model.to(resolve_device(self.train_config.device))
        model.input_format.set_pool(train_ds)  # (formats that draw demonstrations from the training set)
        stages = [entry.build(config.of(f"stage:{entry.name}")) for entry in config.stage_entries()]
        aux = None if unlabeled is None else self._use_unlabeled(model, stages, unlabeled, mlm_weight, train_ds)
        if log is not None:
            c = model.parameter_counts()
            log(f"trainable parameters: {c['trainable']:,} ({c['pct_of_backbone']:.3f}% of the backbone; "
                f"{c['pct_of_backbone_without_head']:.3f}% without the head)")
        dev_enc = model.encode(dev.texts, dev.texts_b) if len(dev) else None
        dev_features: list = []  # filled at the first evaluation, inside the timed loop
        dev_reads: list = []  # dev's read vectors, once training is over (for stages that change only the head)

        def dev_scores(head_only: bool = False) -> torch.Tensor:
            """The dev set's class scores, not yet calibrated. ``head_only``: the body is final (a stage after training
            that changes only the head asks), so dev's read vectors are computed once and only the head scores them."""
            share = procs.share(dev_enc)
            if head_only and not any(e.views for e in share):  # (views are scored through the whole model)
                if not dev_reads:
                    dev_reads.append(model.read_vectors(share, self.train_config.eval_batch_size, self._bf16))
                return procs.gather_rows(model.head_scores(dev_reads[0]), len(dev_enc))
            if not dev_features:  # a frozen backbone's dev features never change: encode them once
                dev_features.append(cached_features(model, share, self.train_config))
            return procs.gather_rows(self._scores(model, share, dev_features[0], calibrated=False), len(dev_enc))

        index = {y: i for i, y in enumerate(labels)}
        gold_dev = [index[y] for y in dev.labels]
        carved_imbalanced = carved and not near_balanced(train_ds.labels)  # (what `auto`'s τ target reads)
        fit_calibration = getattr(model.calibration, "fit", None)  # a calibration fitted on dev (e.g. its τ)

        def evaluate(fit_calibration_first: bool = False, head_only: bool = False) -> dict:
            """The dev report at the current calibration, or (``fit_calibration_first``: for a stage's choice among
            finished classifiers) with the calibration fitted on dev first, as the last step of fitting will.
            ``head_only``: within a stage after training, only the head changed since its last such call."""
            raw = dev_scores(head_only)
            if fit_calibration_first and fit_calibration is not None:
                fit_calibration(raw, gold_dev, carved=carved_imbalanced)
            pred = model.calibrate(raw).argmax(-1).tolist()
            return long_tail_report(dev.labels, [labels[i] for i in pred], self.theta)

        # a run that stops (diverged, interrupted) leaves no half-trained model behind
        self.__dict__.pop("model_", None)
        stage_seconds = 0.0
        for stage in stages:  # a resumed run's checkpoint already holds what the stages before it did
            if stage.when == "before" and not resume:
                stage_seconds += stage.run(model, train_ds, self.train_config, None, log)
        soft = None if soft_labels is None else torch.as_tensor(np.asarray(soft_labels), dtype=torch.float32)
        if soft is not None and train_ds.written:  # descriptions are hard-labelled: one-hot rows after the data's
            extra = torch.tensor([labels.index(y) for y, w in zip(train_ds.labels, train_ds.written) if w])
            soft = torch.cat([soft, torch.nn.functional.one_hot(extra, len(labels)).to(soft.dtype)])
        # a stage before may leave less to the fine-tuning (the contrastive stage's head-only option)
        roles = next((r for s in stages if (r := getattr(s, "fine_tune_roles", lambda _: None)(train_ds))), None)
        if roles and log is not None:
            n = sum(p.numel() for name, p in model.named_parameters() if model.role(name) in roles)
            log(f"fine-tuning: only the {'/'.join(roles)} trains after the stages ({n:,} parameters)")
        result = train(model, train_ds, self.train_config, evaluate if dev_enc else None,
                       checkpoint_dir=checkpoint_dir, resume=resume, settings={"dev": data_hash(dev)}, log=log,
                       on_evaluate=on_evaluate, soft=soft, temperature=temperature, aux=aux, roles=roles)
        model.set_trainable()  # back to the classifier's own trainable set (what its save holds)
        for stage in stages:
            if stage.when == "after":
                dev_reads.clear()  # (read again for each stage: one before it may have changed more than the head)
                stage_seconds += stage.run(model, train_ds, self.train_config, evaluate if dev_enc else None, log)
                self._record(model, getattr(stage, "fitted_options", None))  # what it chose on dev
        result.seconds += stage_seconds
        self.__dict__.pop("prior_state_", None)
        if dev_enc:
            raw_dev = dev_scores()
            self.prior_state_ = fit_state(raw_dev, gold_dev)  # what `--test-prior em` calibrates with
        if fit_calibration is not None and dev_enc:
            fitted = fit_calibration(raw_dev, gold_dev, carved=carved_imbalanced)
            if fitted is not None:
                self._record(model, fitted[0])
                if log is not None:
                    log(fitted[1])
        self.model_, self.labels_, self.class_stats_, self.train_result_ = model, labels, stats, result
        self.train_labels_ = list(train_ds.labels)
        self.unlabeled_texts_ = 0 if unlabeled is None else len(unlabeled)  # (a save records how many)
        return self

    def _record(self, model: Classifier, options: dict | None) -> None:
        """Options chosen on dev while fitting, into what a save records and what `config` shows."""
        if options:
            model.config = model.config.with_options(**options)
            self.config = self.config.with_options(**options)

    def _use_unlabeled(self, model: Classifier, stages: list, texts: list[str], mlm_weight: float,
                       train_ds: TextDataset) -> Any:
        """Unlabelled texts go to every use this classifier has for them (``check_unlabeled`` made sure there is
        one): the stages that take them and PET's auxiliary masked-LM loss; returns that loss or None."""
        from .stages.lm import MaskedLMAux
        for stage in stages:
            if hasattr(stage, "take_unlabeled"):
                stage.take_unlabeled(model, texts)
        takes = model.config.entry("head").trait("takes_unlabeled")  # (the trait check_unlabeled read)
        if takes is not None and takes(model.config, mlm_weight):
            return MaskedLMAux(model, texts, mlm_weight, int(self.train_config.batch_size), self.train_config.seed,
                               self.config.max_length)
        return None

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise ConfigError("this classifier is not trained yet: call fit() or load()")

    @property
    def _bf16(self) -> bool:
        """Predict in bf16? (As the loaded classifier's precision says, else as training ran.)"""
        return getattr(self, "precision_", "fp32") == "bf16" or (
            not hasattr(self, "precision_") and self.train_config.bf16)

    def _scores(self, model: Classifier, encoded: list, features: list | None = None,
                calibrated: bool = True) -> torch.Tensor:
        bf16 = self._bf16
        exit_rule = self.early_exit_ if hasattr(self, "early_exit_") else None
        if exit_rule is not None and features is None and calibrated:
            scores, self.layers_used_ = predict_early_exit(model, encoded, *exit_rule,
                                                           batch_size=self.train_config.eval_batch_size, bf16=bf16)
            return scores
        return predict_logits(model, encoded, self.train_config.eval_batch_size, bf16, calibrated=calibrated,
                              features=features)

    def set_early_exit(self, rule: str | None = None, threshold: float | None = None,
                       patience: int | None = None) -> "TailtuneClassifier":
        """Predict with early exit (a classifier trained with ``head='early-exit'``): rows leave at the first
        layer whose rule fires (``entropy`` below / ``confidence`` at or above ``threshold``, or ``patience``
        layers agreeing; ``normalized-entropy``: entropy / ln(classes) below ``threshold``); unset values come from
        the head's options. ``layers_used_`` holds each text's depth."""
        from .early_exit import check_rule
        self._check_fitted()
        if not hasattr(self.model_.head, "exits"):
            raise ConfigError("early exit needs a classifier trained with head='early-exit'")
        if getattr(self, "test_prior_", "train") == "em":
            raise ConfigError("--test-prior em and early exit do not combine: early exit decides per text")
        if self.model_.router.compiled is not None:
            raise ConfigError(COMPILE_AND_EXIT)
        if rule is not None:
            check_rule(rule)
        for name, value in (("threshold", threshold), ("patience", patience)):
            if value is not None and not value >= 0:
                raise ConfigError(f"early exit: {name}={value!r} must be 0 or more")
        self.early_exit_ = (rule, threshold, patience)
        return self

    def set_precision(self, precision: str) -> "TailtuneClassifier":
        """Prediction precision: ``fp32``, ``bf16`` (autocast), ``int8`` (dynamic quantisation of the linear
        layers, CPU, after folding LoRA into the weights it adapts; not undone) or ``auto`` (fp32 or bf16, whichever is faster on this machine)."""
        from .device import quantize_int8, resolve_precision
        self._check_fitted()
        device = next(self.model_.parameters()).device
        self.precision_ = resolve_precision(precision, device)
        if self.precision_ == "int8":  # LoRA first folded into the weights it adapts: int8 replaces those layers
            from .tuning.lora import merge_lora
            merge_lora(self.model_.router, self.model_.task)
            quantize_int8(self.model_)
        return self

    def set_max_length(self, max_length: int | None) -> "TailtuneClassifier":
        """Read up to ``max_length`` tokens of each text at prediction (``None``: the length it was trained at, the
        default). Training may cut long texts short for cost; prediction can afford to read more of them (README:
        "Reading more of each text at prediction"). Not saved: a saved classifier predicts at its training length."""
        self._check_fitted()
        self.model_.set_max_length(max_length)
        return self

    def set_compile(self, on: bool = True) -> "TailtuneClassifier":
        """Predict through ``torch.compile`` (inductor; any batch size and length; on the CPU the weights are
        frozen into the graph and packed for oneDNN). The first prediction compiles (tens of seconds on a small
        CPU), so it pays on large batches of texts; the scores equal the eager model's to float rounding. Not
        with early exit, which runs the encoder layer by layer."""
        self._check_fitted()
        if on and hasattr(self, "early_exit_"):
            raise ConfigError(COMPILE_AND_EXIT)
        self.model_.router.compile(on)
        return self

    def set_test_prior(self, test_prior: str) -> "TailtuneClassifier":
        """``train``: predict at the prior the classifier was trained and calibrated for (the default); ``em``: each
        call estimates the class shares of the texts it is given from the classifier's posteriors (EM after
        temperature scaling on dev, ``priorshift``) and moves the scores to them, so a text's scores depend on the
        texts predicted with it; ``test_prior_shares_`` holds the last estimate."""
        self._check_fitted()
        if test_prior not in ("train", "em"):
            raise ConfigError(f"test_prior={test_prior!r}: use 'train' or 'em'")
        if test_prior == "em":
            if getattr(self, "prior_state_", None) is None:
                raise ConfigError("--test-prior em needs the temperature and prior fitted on dev after training, which "
                                  "this classifier lacks (trained without a dev set, or saved by an older tailtune): "
                                  "train it again")
            if hasattr(self, "early_exit_"):
                raise ConfigError("--test-prior em and early exit do not combine: early exit decides per text")
        self.test_prior_ = test_prior
        return self

    def decision_function(self, X: Any, X_b: Iterable | None = None) -> np.ndarray:
        """Calibrated class scores, shape (n, classes), columns in ``labels_`` order (moved to the estimated class
        shares of ``X`` under ``set_test_prior("em")``)."""
        self._check_fitted()
        ds = _as_dataset(X, None, X_b)
        if ds.texts_b is None and len(ds) and getattr(self, "text_pairs_", False):
            warnings.warn("this classifier was trained on pairs of texts, but these texts come without a second text "
                          "(X_b; tailtune predict: --data FILE with its column), so each is classified alone")
        if not len(ds):
            return np.zeros((0, len(self.labels_)), dtype=np.float32)
        if getattr(self, "test_prior_", "train") == "em":
            check_size(len(ds), len(self.labels_))
            raw = self._scores(self.model_, self.model_.encode(ds.texts, ds.texts_b), calibrated=False)
            scores, shares = adapt(raw, self.prior_state_)
            self.test_prior_shares_ = dict(zip(self.labels_, shares.tolist()))
            return scores.numpy()
        return self._scores(self.model_, self.model_.encode(ds.texts, ds.texts_b)).numpy()

    def predict_proba(self, X: Any, X_b: Iterable | None = None) -> np.ndarray:
        return torch.softmax(torch.from_numpy(self.decision_function(X, X_b)), -1).numpy()

    def predict(self, X: Any, X_b: Iterable | None = None) -> list[str]:
        return [self.labels_[i] for i in self.decision_function(X, X_b).argmax(-1)]

    def evaluate(self, X: Any, y: Iterable | None = None, X_b: Iterable | None = None, *, theta: float | None = None,
                 groups: str = "auto") -> dict:
        """Long-tail report on labelled data, a TextDataset or texts ``X`` with labels ``y`` as ``fit`` takes them:
        accuracy, macro-F1, head/tail F1 (``groups``: from the class counts of the data or of the training data;
        ``auto`` takes the training counts when the data is near balanced), many/medium/few-shot F1 and per-class
        scores (``metrics.long_tail_report``)."""
        self._check_fitted()
        if isinstance(y, (int, float)):
            raise ConfigError(f"evaluate(data, {y!r}): theta is a keyword argument, evaluate(data, theta={y!r})")
        ds = _as_dataset(X, y, X_b, labelled="evaluate")
        check_labels(ds, self.labels_, "evaluation")
        return long_tail_report(ds.labels, self.predict(ds), self.theta if theta is None else theta,
                                self.class_stats_.get("counts"), groups)

    def weight_norms(self) -> list[dict]:
        self._check_fitted()
        counts_from = getattr(self, "train_labels_", None) or [
            y for y, n in self.class_stats_.get("counts", {}).items() for _ in range(n)]
        return weight_norms(self.labels_, self.model_.class_weight_norms(), counts_from)

    @property
    def n_trainable_(self) -> int:
        self._check_fitted()
        return sum(p.numel() for p in self.model_.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ save / load
    def save_metadata(self, report: Mapping[str, Any] | None = None) -> dict:
        """What a save records beside the weights (``report``: a test report for the model card)."""
        r = getattr(self, "train_result_", None)
        result = {k: getattr(r, k) for k in ("best_dev_macro_f1", "best_step", "steps", "seconds")} if r else \
            getattr(self, "saved_train_result_", None)  # (a loaded classifier saved again keeps its training's)
        metrics = {k: v for k, v in (report or {}).items() if not isinstance(v, (dict, list))} or None
        return {"preset": self.preset, "theta": self.theta, "train_config": self.train_config.to_dict(),
                "class_stats": self.class_stats_, "train_result": result, "test_metrics": metrics,
                **({"prior_state": self.prior_state_} if getattr(self, "prior_state_", None) else {}),
                **({"unlabeled_texts": self.unlabeled_texts_} if getattr(self, "unlabeled_texts_", 0) else {}),
                **({"descriptions": self.descriptions_} if getattr(self, "descriptions_", None) else {}),
                **({"text_pairs": True} if getattr(self, "text_pairs_", False) else {}),
                **({"columns": self.column_names_} if getattr(self, "column_names_", None) else {})}

    def save(self, directory: str | Path, overwrite: bool = False, report: Mapping[str, Any] | None = None) -> Path:
        """Save atomically (safetensors + JSON + a model card, README.md); an existing non-empty directory
        needs ``overwrite``. ``report`` (from ``evaluate``) puts test metrics on the card."""
        self._check_fitted()
        if getattr(self, "precision_", None) == "int8":
            raise ConfigError("this classifier was set to int8 for prediction (its linear layers are quantised and "
                              "any LoRA folded in), which a saved classifier cannot hold; save it before "
                              "set_precision('int8'), or load the saved one again")
        return save_classifier(self.model_, directory, self.save_metadata(report), overwrite)

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto",
             backbone: str | None = None) -> "TailtuneClassifier":
        """Load a saved classifier (a task module goes onto ``backbone``, default: its own)."""
        model = Classifier.load(directory, resolve_device(device), backbone)
        meta = model.saved_metadata
        clf = cls.__new__(cls)
        clf.preset, clf.backbone, clf.config = meta.get("preset"), meta["backbone"]["name"], model.config
        clf.verbalizer = meta.get("verbalizer")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = {k: v for k, v in (meta.get("train_config") or {}).items() if k in known}
        clf.train_config = TrainConfig(**{**saved, "device": device, "progress": False})
        clf.theta, clf.dev_fraction, clf.trust_remote_code = meta.get("theta", 0.65), 0.1, False
        clf.model_, clf.labels_ = model, model.labels
        clf.class_stats_ = meta.get("class_stats") or {}
        clf.saved_train_result_, clf.unlabeled_texts_ = meta.get("train_result"), meta.get("unlabeled_texts", 0)
        clf.text_pairs_, clf.column_names_ = bool(meta.get("text_pairs")), meta.get("columns")
        if meta.get("prior_state") is not None:
            clf.prior_state_ = meta["prior_state"]
        return clf
