"""Long-tail objectives, the cosine head with prototype initialisation, and the contrastive / cRT stages."""
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import tailtune as tt
from tailtune.batch import collate
from tailtune.errors import ConfigError
from tailtune.model import Classifier
from tailtune.objectives import effective_number_weights
from tailtune.registry import BuildContext

LABELS = ["bad", "good", "money"]
COUNTS = {"bad": 90, "good": 9, "money": 1}


def _objective(name, **options):
    cfg = tt.config_from_preset("cls", objective=name, **options)
    ctx = BuildContext(cfg, LABELS, None, None, None, class_counts=COUNTS)
    return cfg.entry("objective").build(cfg.of("objective"), ctx)


def test_logit_adjusted_and_class_balanced_losses_by_hand():
    logits, target = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    prior = torch.tensor([0.9, 0.09, 0.01])
    torch.testing.assert_close(_objective("logit-adjusted")(logits, target), F.cross_entropy(logits + prior.log(), target))
    torch.testing.assert_close(_objective("logit-adjusted", tau=0.5)(logits, target),
                               F.cross_entropy(logits + 0.5 * prior.log(), target))
    w = torch.tensor([(1 - 0.99) / (1 - 0.99 ** n) for n in (90, 9, 1)])
    torch.testing.assert_close(effective_number_weights(torch.tensor([90.0, 9.0, 1.0]), 0.99), w * 3 / w.sum())
    torch.testing.assert_close(_objective("class-balanced", cb_beta=0.99)(logits, target),
                               F.cross_entropy(logits, target, weight=w * 3 / w.sum()))


def test_ldam_margins_and_deferred_reweighting():
    loss = _objective("ldam-drw", ldam_max_margin=0.5, drw_start=0.5)
    margins = torch.tensor([90.0, 9.0, 1.0]) ** -0.25
    torch.testing.assert_close(loss.margins, margins * 0.5 / margins.max())  # the rarest class gets 0.5
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 2])
    shifted = logits - F.one_hot(target, 3) * loss.margins
    loss.set_progress(0.2)
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(shifted, target))
    loss.set_progress(0.6)  # re-weighted from drw_start on
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(shifted, target, weight=loss.weights))


def test_post_hoc_logit_adjustment_survives_save_and_load(tiny_bert, toy, tmp_path):
    texts, labels = toy
    texts, labels = texts + ["oil price"] * 30, labels + ["money"] * 30  # money is now the head class
    clf = tt.TailtuneClassifier("cls", tiny_bert, calibration="logit-adjust",
                                train_config=tt.TrainConfig(epochs=1, progress=False))
    clf.fit(texts, labels)
    raw = torch.tensor(clf.decision_function(texts[:4]))
    counts = torch.tensor([float(clf.class_stats_["counts"][y]) for y in clf.labels_])
    model = clf.model_
    with torch.no_grad():
        logits = model(**collate(model.encode(texts[:4]), model.tokenizer.pad_token_id, torch.device("cpu")))
    torch.testing.assert_close(raw, logits - (counts / counts.sum()).log(), atol=1e-5, rtol=1e-5)
    clf.save(tmp_path / "m")
    torch.testing.assert_close(torch.tensor(tt.TailtuneClassifier.load(tmp_path / "m", "cpu").decision_function(texts[:4])),
                               raw, atol=1e-5, rtol=1e-5)


def test_logit_adjustment_fitted_on_dev_picks_the_best_tau_and_saves_it(tiny_bert, toy, tmp_path):
    from sklearn.metrics import f1_score
    from tailtune.objectives import ADJUST_TAUS, LogitAdjust, smallest_within_one_se
    prior = torch.tensor([0.9, 0.09, 0.01]).log()
    raw = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.5, -3.0]])
    gold = [0, 2, 1]  # unadjusted, every row goes to the head class; τ = 0.25 and 0.5 get all three right, 1 does not
    cal = LogitAdjust(prior, 0.0, from_dev=True)
    options, line = cal.fit(raw, gold)
    by_hand = {t: f1_score(gold, (raw - t * prior).argmax(-1).tolist(), average="macro") for t in ADJUST_TAUS}
    assert by_hand[0.25] == by_hand[0.5] == 1.0 > by_hand[1.0] and by_hand[0.0] < 0.2
    assert options["adjust_tau"] == 0.25  # the best dev macro-F1; of a tie, the smaller τ
    # the one-standard-error rule: a gain within the noise of the dev set leaves the scores as they are
    scored = {0.0: 0.80, 0.25: 0.805, 0.5: 0.81, 1.0: 0.70}
    assert smallest_within_one_se(scored, 100) == (0.0, pytest.approx((0.81 * 0.19 / 100) ** 0.5))
    assert smallest_within_one_se(scored, 100_000)[0] == 0.5
    assert cal.tau == options["adjust_tau"] and "chosen on dev" in line
    torch.testing.assert_close(cal(raw), raw - cal.tau * prior)
    assert LogitAdjust(prior, 0.5, from_dev=False).fit(raw, gold) is None  # a fixed τ stays as set

    # a dev set without the rarest class (R52's has 39 of its 52): predicting that class costs a whole class's F1
    # in scikit-learn's macro-F1, over dev's own classes only the recall of the text it took
    prior3 = torch.tensor([0.8, 0.15, 0.05]).log()
    raw3 = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.5, -3.0], [0.0, 2.0, -3.0]]).repeat(100, 1)
    gold3 = [0, 0, 1, 1] * 100  # τ = 0.5 mends the third row and moves the second to class 2, which dev lacks
    assert LogitAdjust(prior3, 0.0, from_dev=True).fit(raw3, gold3)[0]["adjust_tau"] == 0.0
    assert LogitAdjust(prior3, 0.0, from_dev=True, own_classes=True).fit(raw3, gold3)[0]["adjust_tau"] == 0.5

    texts, labels = toy  # end to end: the chosen τ is what the classifier predicts with, and what a save holds
    texts, labels = texts + ["oil price"] * 30, labels + ["money"] * 30
    lines = []
    clf = tt.TailtuneClassifier("cls", tiny_bert, calibration="logit-adjust", adjust_tau=0.0, adjust_tau_from_dev=True,
                                train_config=tt.TrainConfig(epochs=1, progress=False))
    clf.fit(texts, labels, dev=tt.TextDataset(texts[:12], labels[:12]), log=lines.append)
    tau = clf.model_.config.options["adjust_tau"]
    assert tau in ADJUST_TAUS and any(f"τ = {tau:g} chosen on dev" in x for x in lines)
    assert clf.model_.calibration.tau == tau
    before = clf.decision_function(texts[:4])
    clf.save(tmp_path / "m")
    loaded = tt.TailtuneClassifier.load(tmp_path / "m", "cpu")
    assert loaded.model_.config.options["adjust_tau"] == tau
    torch.testing.assert_close(torch.tensor(loaded.decision_function(texts[:4])), torch.tensor(before),
                               atol=1e-5, rtol=1e-5)


def test_logit_adjustment_for_a_balanced_target_and_a_carved_dev_set(tiny_bert, toy):
    from tailtune.objectives import LogitAdjust, balanced_tau
    # dev drawn at the training prior π, scores 4x too sharp: the exact balanced posteriors are softmax(z - log π) on
    # the calibrated scores z, so the class-balanced log-loss is least near τ = 1 there, τ = 4 in raw units
    g = torch.Generator().manual_seed(0)
    prior = torch.tensor([0.7, 0.2, 0.1])
    y = torch.multinomial(prior, 4000, replacement=True, generator=g)
    raw = 4 * (1.5 * (1.5 * F.one_hot(y, 3).float() + torch.randn(4000, 3, generator=g)) + prior.log())
    tau, t = balanced_tau(raw, y.tolist(), prior.log())
    assert t == pytest.approx(4, rel=0.1) and tau == pytest.approx(4, rel=0.15)
    # which rule fits: `auto` takes the balanced target for a carved dev set only; `dev` and `balanced` always
    for target, carved, balanced in (("auto", True, True), ("auto", False, False), ("dev", True, False),
                                     ("balanced", False, True)):
        options, line = LogitAdjust(prior.log(), 0.0, True, target).fit(raw, y.tolist(), carved=carved)
        assert ("class-balanced test set" in line) == balanced
        assert options["adjust_tau"] == (pytest.approx(tau) if balanced else 0.0)  # F1 here: best unadjusted
    texts, labels = toy  # end to end: no dev set given, so fit carves one from imbalanced data and aims at balance
    texts, labels = texts + [f"oil price {i}" for i in range(40)], labels + ["money"] * 40
    lines = []
    clf = tt.TailtuneClassifier("cls", tiny_bert, calibration="logit-adjust", adjust_tau_from_dev=True,
                                adjust_target="auto", train_config=tt.TrainConfig(epochs=1, progress=False))
    clf.fit(texts, labels, log=lines.append)
    assert any("class-balanced test set" in x and "--adjust-target dev" in x for x in lines)
    assert clf.model_.calibration.tau == clf.model_.config.options["adjust_tau"] == clf.config.options["adjust_tau"]


def test_test_prior_em_recovers_a_shifted_prior_and_round_trips(tiny_bert, toy, tmp_path):
    from tailtune.errors import ConfigError
    from tailtune.priorshift import adapt, estimate_prior, fit_state
    # calibrated posteriors under a training prior π, drawn at other test shares q: EM finds q (Saerens et al., 2002)
    g = torch.Generator().manual_seed(0)
    prior, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.3, 0.5])
    y = torch.multinomial(q, 6000, replacement=True, generator=g)
    # unit Gaussians around 1.5·e_y: the log-likelihood of class c is 1.5·z_c up to a constant shared by the classes
    z = 1.5 * (1.5 * F.one_hot(y, 3).float() + torch.randn(6000, 3, generator=g))
    probs = torch.softmax(z + prior.log(), -1)  # exact posteriors under π
    torch.testing.assert_close(estimate_prior(probs, prior), q, atol=0.03, rtol=0)
    torch.testing.assert_close(estimate_prior(probs[y == 0][:500], prior), torch.tensor([1.0, 0, 0]), atol=0.1, rtol=0)
    # shares equal to the prior leave the posteriors where they are (a fixed point)
    torch.testing.assert_close(estimate_prior(prior.expand(10, 3), prior), prior)
    # the temperature minimises the dev NLL: scores 4x too sharp come back near T = 4
    dev_y = torch.multinomial(prior, 4000, replacement=True, generator=g)
    dev_z = 1.5 * (1.5 * F.one_hot(dev_y, 3).float() + torch.randn(4000, 3, generator=g)) + prior.log()
    state = fit_state(4 * dev_z, dev_y.tolist())
    assert state["temperature"] == pytest.approx(4, rel=0.1)
    torch.testing.assert_close(torch.tensor(state["model_prior"]), torch.softmax(dev_z, -1).mean(0), atol=0.01, rtol=0)
    scores, shares = adapt(4 * (z + prior.log()), state)
    torch.testing.assert_close(shares, q, atol=0.05, rtol=0)
    # at the estimated shares, accuracy is that of the Bayes rule at the true shares, well above the training prior's
    accuracy = lambda s: (s.argmax(-1) == y).float().mean().item()  # noqa: E731
    assert accuracy(scores) >= accuracy(z + q.log()) - 0.005 and accuracy(scores) > accuracy(z + prior.log()) + 0.05

    texts, labels = toy  # end to end: fitted on dev by fit, saved, loaded, asked for
    texts, labels = texts + ["oil price"] * 30, labels + ["money"] * 30
    clf = tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(epochs=1, progress=False))
    with pytest.raises(ConfigError, match="train"):
        clf.set_test_prior("balanced")
    clf.fit(texts, labels, dev=tt.TextDataset(texts[:24], labels[:24]))
    assert set(clf.prior_state_) == {"temperature", "model_prior"} and len(clf.prior_state_["model_prior"]) == 3
    plain = clf.decision_function(texts)
    em = clf.set_test_prior("em").decision_function(texts)
    raw = clf._scores(clf.model_, clf.model_.encode(texts), calibrated=False)
    torch.testing.assert_close(torch.tensor(em), adapt(raw, clf.prior_state_)[0])
    assert sum(clf.test_prior_shares_.values()) == pytest.approx(1.0) and set(clf.test_prior_shares_) == set(clf.labels_)
    with pytest.raises(ConfigError, match="at least 20 texts"):
        clf.decision_function(texts[:5])
    clf.save(tmp_path / "m")
    loaded = tt.TailtuneClassifier.load(tmp_path / "m", "cpu")
    assert loaded.prior_state_ == clf.prior_state_
    torch.testing.assert_close(torch.tensor(loaded.decision_function(texts)), torch.tensor(plain), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(loaded.set_test_prior("em").decision_function(texts)), torch.tensor(em),
                               atol=1e-5, rtol=1e-5)
    del loaded.prior_state_  # a classifier saved without it (older, or trained without dev) is refused up front
    with pytest.raises(ConfigError, match="train it again"):
        loaded.set_test_prior("em")


def test_cosine_head_starts_from_class_prototypes(tiny_bert, toy):
    texts, labels = toy
    model = tt.build_classifier(tt.config_from_preset("cls", readout="mean", head="cosine"), LABELS, tiny_bert)
    targets = torch.tensor([LABELS.index(y) for y in labels])
    protos = model.class_prototypes(model.encode(texts), targets)
    model.eval()
    with torch.no_grad():  # by hand: the mean of each class's L2-normalised mean-pooled vectors
        batch = collate(model.encode(texts), model.tokenizer.pad_token_id, torch.device("cpu"))
        h = model.features(batch["input_ids"], batch["attention_mask"])
        x = F.normalize(model.readout(h, batch["attention_mask"], batch["position"])[0], dim=-1)
    for c in range(3):
        torch.testing.assert_close(protos[c], x[targets == c].mean(0), atol=1e-5, rtol=1e-5)
    model.head.init_from_prototypes(protos)
    with torch.no_grad():
        scores = model.head(x)
    torch.testing.assert_close(scores, 16 * x @ F.normalize(protos, dim=-1).T, atol=1e-4, rtol=1e-4)
    # train() starts the head there: after 0 steps of learning (lr ~ 0) the weights are the prototypes
    fresh = tt.build_classifier(tt.config_from_preset("cls", readout="mean", head="cosine"), LABELS, tiny_bert)
    tt.train(fresh, tt.TextDataset(texts, labels), tt.TrainConfig(steps=1, lr=1e-12, head_lr=1e-12, progress=False))
    torch.testing.assert_close(F.normalize(fresh.head.weight, dim=-1), F.normalize(protos, dim=-1), atol=1e-4, rtol=0)


def test_cosine_head_with_a_layer_norm_scores_and_starts_in_its_space(tiny_bert, toy):
    texts, labels = toy
    cfg = tt.config_from_preset("auto", layer_norm="fresh")
    model = tt.build_classifier(cfg, LABELS, tiny_bert)
    assert isinstance(model.head.layer_norm, torch.nn.LayerNorm)
    targets = torch.tensor([LABELS.index(y) for y in labels])
    protos = model.class_prototypes(model.encode(texts), targets)
    model.head.init_from_prototypes(protos)
    with torch.no_grad():  # a learnt gain and shift that are not the identity, to check where they apply
        model.head.layer_norm.weight.uniform_(0.5, 1.5)
        model.head.layer_norm.bias.uniform_(-0.5, 0.5)
    ln = model.head.layer_norm
    x = torch.randn(5, protos.shape[1]) + 3.0  # a shared offset: the LayerNorm takes each vector's mean out
    with torch.no_grad():
        scores = model.head(x)
    by_hand = 16 * F.normalize(ln(x), dim=-1) @ F.normalize(model.head.weight, dim=-1).T
    torch.testing.assert_close(scores, by_hand, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores, 16 * F.normalize(x, dim=-1) @ F.normalize(model.head.weight, dim=-1).T,
                              atol=1e-2)
    # the class weights started as the prototypes through the LayerNorm as it was then (γ = 1, β = 0)
    fresh = torch.nn.functional.layer_norm(protos, protos.shape[1:], eps=ln.eps)
    torch.testing.assert_close(F.normalize(model.head.weight, dim=-1), F.normalize(fresh, dim=-1), atol=1e-5, rtol=0)
    # bf16 weights (a classifier cast for prediction) still score in float32
    with torch.no_grad():
        half = model.head.to(torch.bfloat16)(x.bfloat16())
    assert half.dtype == torch.float32 and torch.allclose(half, scores, atol=0.5)
    with pytest.raises(ConfigError, match="layer_norm='sometimes'"):
        tt.config_from_preset("auto", layer_norm="sometimes")


@pytest.mark.parametrize("preset, options", [("auto", {"contrastive_below": 1}), ("cls", {"layer_norm": "auto"})])
def test_auto_layer_norm_is_chosen_from_the_examples_per_class_and_saved_as_chosen(tiny_bert, toy, tmp_path,
                                                                                   preset, options):
    """`auto`'s head (and an MLP head given layer_norm=auto) has a fresh LayerNorm where the classes average
    layer_norm_from examples or more (the fitted configuration says which, so a saved classifier loads with it),
    none below, and none where no data chose (a build without fit)."""
    texts, labels = toy
    per_class = len(texts) / len(set(labels))  # (the dev set is given: nothing is carved off)
    assert tt.build_classifier(tt.config_from_preset(preset, **options), LABELS, tiny_bert).head.layer_norm is None
    for bound, has in ((per_class, True), (per_class + 1, False)):
        clf = tt.TailtuneClassifier(preset, tiny_bert, layer_norm_from=bound, **options,
                                    train_config=tt.TrainConfig(epochs=1, batch_size=8, progress=False, seed=1))
        lines: list[str] = []
        clf.fit(texts, labels, dev=tt.TextDataset(texts, labels), log=lines.append)
        assert isinstance(clf.model_.head.layer_norm, torch.nn.LayerNorm) is has
        assert f"chosen from the training data ({per_class:.1f} examples per class on average): layer_norm=" \
               f"{'fresh' if has else 'none'}" in lines  # train says what it chose
        assert clf.model_.config.options["layer_norm"] == ("fresh" if has else "none")
        if has:  # it trained
            assert not torch.equal(clf.model_.head.layer_norm.weight, torch.ones_like(clf.model_.head.layer_norm.weight))
        clf.save(tmp_path / str(has))
        again = tt.TailtuneClassifier.load(tmp_path / str(has))
        assert isinstance(again.model_.head.layer_norm, torch.nn.LayerNorm) is has
        assert again.predict(texts) == clf.predict(texts)
    with pytest.raises(ConfigError, match="layer_norm_from"):
        tt.config_from_preset(preset, layer_norm_from=-1)


def test_only_a_pretrained_layer_norm_needs_the_mlm_head():  # (the copy itself: test_heads.py)
    assert tt.config_from_preset("auto", layer_norm="pretrained").needs_mlm_head
    assert not tt.config_from_preset("auto", layer_norm="fresh").needs_mlm_head


def test_contrastive_pairs_are_balanced_over_classes():
    from tailtune.stages.contrastive import sample_pairs
    labels = ["a"] * 500 + ["b"] * 20 + ["c"] * 3
    pairs = sample_pairs(labels, 3000, random.Random(0), by="class")
    assert all((labels[i] == labels[j]) == bool(same) and i != j for i, j, same in pairs)
    anchors = Counter(labels[i] for i, _, _ in pairs)
    assert min(anchors.values()) > 0.25 * 3000 and Counter(s for _, _, s in pairs)[1.0] == 1500
    setfit_like = Counter(labels[i] for i, _, _ in sample_pairs(labels, 3000, random.Random(0), by="example"))
    assert setfit_like["c"] < 0.05 * 3000  # anchors over examples: the tail class is nearly never drawn


def test_contrastive_pairs_never_exceed_the_distinct_pairs_or_the_cap():
    from tailtune.stages.contrastive import ContrastiveOptions, n_pairs
    opts = ContrastiveOptions(contrastive_distinct=True)
    assert n_pairs(32, opts) == 32 * 31 // 2  # 16-shot binary: 496 distinct pairs, not 2 x 20 x 32 = 1280 draws
    assert n_pairs(400, opts) == 8000  # 8-shot, 50 classes: 16,000 draws capped at 8,000
    assert n_pairs(150, opts) == 2 * 20 * 150  # 6,000 draws, fewer than the 11,175 distinct pairs
    assert n_pairs(32, ContrastiveOptions()) == 1280  # the default: SetFit's two per example and iteration


def test_contrastive_stage_tunes_the_body_and_crt_only_the_head(tiny_bert, toy):
    texts, labels = toy
    clf = tt.TailtuneClassifier("cls", tiny_bert, readout="mean", head="cosine", stages=["contrastive", "crt"],
                                contrastive_max_pairs=48, crt_epochs=2,
                                train_config=tt.TrainConfig(epochs=1, batch_size=8, lr=1e-3, progress=False, seed=1))
    calls = []
    import tailtune.stages.contrastive as contrastive
    import tailtune.stages.crt as crt
    real_c, real_t = contrastive.run, crt.train

    def record_c(job, cfg, *a, **k):
        before = {n: p.detach().clone() for n, p in job.model.named_parameters()}
        out = real_c(job, cfg, *a, **k)
        calls.append(("contrastive", {n for n, p in job.model.named_parameters() if not torch.equal(p, before[n])}))
        return out

    def record_t(model, *a, **k):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = real_t(model, *a, **k)
        calls.append(("crt", {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}, k))
        return out
    contrastive.run, crt.train = record_c, record_t
    try:
        clf.fit(texts, labels)
    finally:
        contrastive.run, crt.train = real_c, real_t
    (c_name, c_moved), (t_name, t_moved, t_kw) = calls
    assert c_name == "contrastive" and c_moved and all(n.startswith("encoder.") for n in c_moved)
    assert t_name == "crt" and t_moved and all(n.startswith("head.") for n in t_moved)
    assert t_kw["sampling"] == "class-balanced" and t_kw["roles"] == ("head",)
    assert all(p.requires_grad for p in clf.model_.encoder.parameters())  # back to its own trainable set
    with pytest.raises(tt.ConfigError, match="contrastive stage tunes the body"):
        tt.config_from_preset("linear-probe", stages=["contrastive"])
    with pytest.raises(tt.ConfigError, match="belongs to stage 'crt'"):
        tt.config_from_preset("cls", crt_epochs=3)


def test_class_balanced_batches_draw_every_class_alike(tiny_bert):
    from tailtune.training import ClassificationJob
    labels = ["bad"] * 80 + ["good"] * 15 + ["money"] * 5
    model = tt.build_classifier(tt.config_from_preset("cls"), LABELS, tiny_bert)
    job = ClassificationJob(model, tt.TextDataset(["the film"] * 100, labels), tt.TrainConfig(batch_size=10, seed=0),
                            model.encode_training, sampling="class-balanced")
    drawn = Counter(labels[i] for e in range(20) for b in job.batches(e) for i in b)
    assert all(abs(n / sum(drawn.values()) - 1 / 3) < 0.03 for n in drawn.values())


def test_auto_runs_its_contrastive_stage_only_in_the_few_shot_regime(tiny_bert, toy):
    texts, labels = toy  # a few examples per class: below 1000 the stage runs; below 1 (never) it is skipped
    seen = {}
    for below in (1000, 1):
        lines: list[str] = []
        clf = tt.TailtuneClassifier("auto", tiny_bert, contrastive_max_pairs=16, contrastive_below=below,
                                    train_config=tt.TrainConfig(epochs=1, batch_size=8, progress=False, seed=1))
        clf.fit(texts, labels, log=lines.append)
        seen[below] = [line for line in lines if line.startswith("contrastive stage")]
    assert "16 pairs" in seen[1000][0] and "done" in seen[1000][-1]
    assert len(seen[1]) == 1 and "skipped" in seen[1][0]
    # the preset's own stage gives way where an override makes it inapplicable; a stage the user names does not
    assert tt.config_from_preset("auto").stages == ("contrastive", "memory")
    assert tt.config_from_preset("auto", trains="head").stages == ("memory",)  # (the memory needs no body training)
    assert tt.config_from_preset("auto", head="mlp").stages == ("contrastive",)  # (only the cosine head remembers)
    assert "contrastive_below" not in tt.config_from_preset("auto", stages=[]).options
    with pytest.raises(tt.ConfigError, match="--stages none"):
        tt.config_from_preset("auto", trains="head", stages=["contrastive"])


def test_the_contrastive_stage_tunes_the_last_layer_under_an_early_exit_head(tiny_bert, toy):
    """`auto` (contrastive stage below 64 examples per class) with `--head early-exit`: the readout gives one
    vector per layer, and the pairs compare the last layer's (this crashed with a shape error)."""
    texts, labels = toy
    clf = tt.TailtuneClassifier("auto", tiny_bert, head="early-exit", contrastive_max_pairs=48,
                                train_config=tt.TrainConfig(epochs=2, batch_size=8, lr=1e-3, progress=False, seed=1))
    before = {n: p.detach().clone() for n, p in tt.build_classifier(clf.config, sorted(set(labels)), tiny_bert)
              .encoder.named_parameters()}
    clf.fit(texts, labels, dev=tt.TextDataset(texts, labels))
    assert "contrastive" in clf.config.stages
    assert any(not torch.equal(p, before[n]) for n, p in clf.model_.encoder.named_parameters())
    assert len(clf.predict(texts)) == len(texts)


def test_contrastive_read_once_reads_each_text_once_and_equals_reading_both_sides(tiny_bert, toy):
    """A batch whose pairs share texts: by default both sides of every pair are read, as SetFit does; with
    contrastive_read_once one read per distinct text, and (without dropout) the same loss and gradients."""
    from tailtune.stages.contrastive import ContrastiveOptions, PairJob
    texts, labels = toy
    model = tt.build_classifier(tt.config_from_preset("auto"), sorted(set(labels)), tiny_bert).eval()
    pairs = [(0, 1, 1.0), (0, 2, 0.0), (2, 1, 0.0), (3, 0, 1.0), (0, 1, 1.0)]
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    losses, reads = {}, {}
    for once in (False, True):
        job = PairJob(model, tt.TextDataset(texts, labels), ContrastiveOptions(contrastive_read_once=once),
                      tt.TrainConfig(progress=False))
        reads[once], real = [], job._read
        job._read = lambda idx, seen=reads[once], real=real: seen.append(list(idx)) or real(idx)
        losses[once] = job.loss(pairs, 0)
    assert reads[False] == [[0, 0, 2, 3, 0], [1, 2, 1, 0, 1]] and reads[True] == [[0, 1, 2, 3]]
    loss, ref = losses[True], losses[False]
    got, want = torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)
    assert loss.item() > 0 and any(g.abs().sum() > 0 for g in got)
    assert torch.allclose(loss, ref, atol=1e-6)
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


def test_the_contrastive_regime_counts_observed_examples_not_label_descriptions(toy):
    """Label descriptions that join the training examples do not lift a few-shot set out of the head-only regime
    (or out of the stage's): the bound reads the observed examples per class."""
    from tailtune.data import with_descriptions
    from tailtune.stages.contrastive import ContrastiveOptions, ContrastiveStage, per_class
    texts, labels = toy
    ds = tt.TextDataset(texts, labels)
    observed = len(texts) / len(set(labels))
    more = with_descriptions(ds, {y: f"about {y}" for y in set(labels)}, copies=4)
    assert len(more) / len(set(labels)) == observed + 4 and per_class(more) == observed == per_class(ds)
    assert more.observed() == len(texts) and more.subset(range(len(more))).observed() == len(texts)
    assert more.subset([0, len(more) - 1]).written == [False, True]
    stage = ContrastiveStage(ContrastiveOptions(contrastive_below=observed + 1, contrastive_head_only_below=observed + 1))
    assert stage.applies(more) and stage.fine_tune_roles(more) == ("head",)
    assert stage.fine_tune_roles(tt.TextDataset(more.texts, more.labels)) is None  # (the same texts, all observed)


def test_contrastive_pairs_observed_keeps_label_descriptions_out_of_the_pairs(tiny_bert, toy):
    """--contrastive-pairs observed draws every pair from observed examples, so a description joins only the head's
    training; the default draws from all, descriptions included; a description-only class leaves too few classes."""
    from tailtune.data import with_descriptions
    from tailtune.stages.contrastive import ContrastiveOptions, PairJob
    texts, labels = toy
    more = with_descriptions(tt.TextDataset(texts, labels), {y: f"about {y}" for y in set(labels)}, copies=4)
    model = tt.build_classifier(tt.config_from_preset("auto"), sorted(set(labels)), tiny_bert)
    drawn = {}
    for which in ("all", "observed"):
        job = PairJob(model, more, ContrastiveOptions(contrastive_pairs=which, contrastive_max_pairs=400),
                      tt.TrainConfig(progress=False, seed=3))
        drawn[which] = {i for batch in job.batches(0) for p in batch for i in p[:2]}
        assert len(job.labels) == (len(more) if which == "all" else len(texts))
    assert max(drawn["observed"]) < len(texts) and max(drawn["all"]) >= len(texts)  # descriptions come last
    one = tt.TextDataset(texts[:1], labels[:1])
    only_one = with_descriptions(one, {labels[0]: "a", next(y for y in labels if y != labels[0]): "b"},
                                 known=set(labels))
    with pytest.raises(tt.ConfigError, match="observed examples"):
        PairJob(model, only_one, ContrastiveOptions(contrastive_pairs="observed"), tt.TrainConfig(progress=False))
    with pytest.raises(tt.ConfigError, match="contrastive_pairs"):
        ContrastiveOptions(contrastive_pairs="written")


def test_contrastive_head_only_below_trains_the_head_on_the_frozen_tuned_body_and_saves_the_body(
        tiny_bert, toy, tmp_path, monkeypatch):
    """Below contrastive_head_only_below examples per class, the stage tunes the body, then the fine-tuning moves
    only the head, on features computed once; the classifier keeps its own trainable set, so its save holds the
    tuned body. At or above that bound, or where the stage is skipped, the fine-tuning trains everything."""
    import tailtune.api as api
    import tailtune.training as training
    texts, labels = toy
    seen: list = []
    real_train, real_cache = api.train, training.cached_features

    def record_train(model, *a, **k):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = real_train(model, *a, **k)
        moved = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        seen.append((k["roles"], moved))
        return out

    def record_cache(model, encoded, cfg):
        out = real_cache(model, encoded, cfg)
        seen.append(("cached", out is not None))
        return out
    monkeypatch.setattr(api, "train", record_train)
    monkeypatch.setattr(training, "cached_features", record_cache)
    fits = {}
    per_class = len(texts) / len(set(labels))
    for below, head_below in ((1000, 1000), (1000, per_class), (1, 1000)):  # head only / the bound / no stage
        seen.clear()
        clf = tt.TailtuneClassifier("auto", tiny_bert, contrastive_max_pairs=32, contrastive_below=below,
                                    contrastive_head_only_below=head_below, train_config=tt.TrainConfig(
                                        epochs=2, batch_size=8, lr=1e-3, progress=False, seed=1))
        pristine = tt.build_classifier(clf.config, sorted(set(labels)), tiny_bert).encoder.state_dict()
        lines: list[str] = []
        clf.fit(texts, labels, dev=tt.TextDataset(texts, labels), log=lines.append)  # (no dev carved from train)
        fits[below, head_below] = (clf, list(seen), any(not torch.equal(p, pristine[n]) for n, p
                                                        in clf.model_.encoder.state_dict().items()), lines)
    clf, calls, body_moved, lines = fits[1000, 1000]
    assert calls[-1] == (("head",), {"head"}) and ("cached", True) in calls and body_moved
    heads = sum(p.numel() for p in clf.model_.head.parameters())
    assert f"fine-tuning: only the head trains after the stages ({heads:,} parameters)" in lines
    assert all(p.requires_grad for p in clf.model_.encoder.parameters())  # back to its own trainable set
    clf.save(tmp_path / "clf")
    again = tt.TailtuneClassifier.load(tmp_path / "clf")
    assert (again.predict_proba(texts) == clf.predict_proba(texts)).all()  # the tuned body was saved
    for key in ((1000, per_class), (1, 1000)):
        clf, calls, _, lines = fits[key]
        assert calls[-1][0] is None and "encoder" in calls[-1][1] and ("cached", True) not in calls
        assert not any(line.startswith("fine-tuning: only") for line in lines)
    assert any("done" in line for line in fits[1000, per_class][3]) and "skipped" in " ".join(fits[1, 1000][3])
    assert tt.config_from_preset("auto").options["contrastive_head_only_below"] == 17
    with pytest.raises(tt.ConfigError, match="belongs to stage 'contrastive'"):
        tt.config_from_preset("auto", stages=[], contrastive_head_only_below=10)


def test_contrastive_supcon_loss_matches_its_definition_and_trains_the_body(tiny_bert, toy):
    """--contrastive-loss supcon: Khosla et al.'s L_out over the 2P texts of a batch of pairs, checked against a
    per-anchor loop; the body's loss falls over a short stage; the default (cosine) is left out of saved configs."""
    import math

    from tailtune.loop import run
    from tailtune.stages.contrastive import ContrastiveOptions, PairJob
    texts, labels = toy
    model = tt.build_classifier(tt.config_from_preset("auto"), sorted(set(labels)), tiny_bert).eval()
    job = PairJob(model, tt.TextDataset(texts, labels), ContrastiveOptions(contrastive_loss="supcon"),
                  tt.TrainConfig(progress=False))
    pairs = [(0, 1, 1.0), (0, 2, 0.0), (3, 1, 0.0)]
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen)
    got = job._supcon(a, b, pairs)
    x = torch.nn.functional.normalize(torch.cat([a, b]), dim=-1)
    y = [job.labels[p[0]] for p in pairs] + [job.labels[p[1]] for p in pairs]
    per_anchor = []
    for i in range(6):
        others = [k for k in range(6) if k != i]
        denom = sum(math.exp(float(x[i] @ x[k]) / 0.07) for k in others)
        pos = [k for k in others if y[k] == y[i]]
        if pos:
            per_anchor.append(-sum(float(x[i] @ x[p]) / 0.07 - math.log(denom) for p in pos) / len(pos))
    assert len(per_anchor) >= 2 and got.item() == pytest.approx(sum(per_anchor) / len(per_anchor), rel=1e-4)
    apart = next(i for i, label in enumerate(job.labels) if label != job.labels[0])
    none = job._supcon(a[:1], b[:1], [(0, apart, 0.0)])  # no two texts of a class in the batch: 0, not nan
    assert none.item() == 0.0
    cfg = tt.TrainConfig(epochs=4, batch_size=16, lr=1e-3, progress=False, seed=0)
    job = PairJob(model, tt.TextDataset(texts, labels), ContrastiveOptions(contrastive_loss="supcon",
                                                                           contrastive_max_pairs=64), cfg)
    fixed = [p for batch in job.batches(0) for p in batch]
    with torch.no_grad():
        before = job.loss(fixed, 0).item()
    run(job, cfg)
    model.eval()  # (the loop leaves it training: compare without dropout, as before)
    with torch.no_grad():
        after = job.loss(fixed, 0).item()
    assert after < before
    clf = tt.TailtuneClassifier("auto", tiny_bert, contrastive_loss="supcon", contrastive_max_pairs=16,
                                train_config=tt.TrainConfig(epochs=1, batch_size=8, progress=False, seed=0))
    lines: list[str] = []
    clf.fit(texts, labels, log=lines.append)
    assert any(line.startswith("contrastive stage: done") for line in lines)
    assert any("pairs per epoch" in line and line.endswith("supervised contrastive loss") for line in lines)
    assert clf.config.to_dict()["options"]["contrastive_loss"] == "supcon"
    assert "contrastive_loss" not in tt.config_from_preset("auto").to_dict()["options"]
    with pytest.raises(tt.ConfigError, match="contrastive_loss"):
        ContrastiveOptions(contrastive_loss="triplet")
    with pytest.raises(tt.ConfigError, match="only the cosine loss"):
        tt.config_from_preset("pabee", stages=["contrastive"], contrastive_every_exit=True, contrastive_loss="supcon")


def test_memory_stage_mixes_each_class_nearest_training_text(tiny_bert, toy, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from tailtune.multitask import TaskSet
    texts, labels = toy
    config = {"readout": "mean", "head": "cosine", "stages": ["memory"], "train_config": tt.TrainConfig(
        epochs=2, batch_size=8, head_lr=1e-2, progress=False, seed=1)}
    dev = tt.TextDataset(texts[:6], labels[:6])
    plain = tt.TailtuneClassifier("linear-probe", tiny_bert, **{**config, "stages": []}).fit(texts, labels, dev=dev)
    lines = []
    clf = tt.TailtuneClassifier("linear-probe", tiny_bert, memory_weight=0.5, **config).fit(texts, labels, dev=dev,
                                                                                          log=lines.append)
    assert any(line.startswith("memory: the head remembers 36 training texts (32 floats each)") for line in lines)
    head = clf.model_.head
    assert head.memory.shape == (len(texts), 32) and float(head.memory_weight) == 0.5
    torch.testing.assert_close(head.memory.norm(dim=-1), torch.ones(len(texts)))
    # by hand: s · ((1 − λ)·cos(w_c, h) + λ·max over class c's training texts of cos(v_i, h)), the same trained head
    queries = ["a new text", texts[0]]
    h = F.normalize(clf.model_.read_vectors(clf.model_.encode(queries)), dim=-1)
    cos_w = h @ F.normalize(head.weight, dim=-1).T
    best = torch.stack([(h @ head.memory[head.memory_labels == c].T).max(-1).values for c in range(3)], -1)
    s = head.log_scale.exp()
    torch.testing.assert_close(torch.as_tensor(clf.decision_function(queries)), s * (0.5 * cos_w + 0.5 * best))
    torch.testing.assert_close(torch.as_tensor(plain.decision_function(queries)), s * cos_w)  # (same seed, same head)
    # λ = 1: the nearest training text decides, so every training text gets its own label back
    head.memory_weight.fill_(1.0)
    assert clf.predict(texts) == list(labels)
    head.memory_weight.fill_(0.5)
    # a task module saves its memory and loads it back; it shares a backbone with other tasks
    clf.save(tmp_path / "m")
    saved = load_file(tmp_path / "m" / "module.safetensors")
    assert {"head.memory", "head.memory_labels", "head.memory_weight"} <= set(saved)
    loaded = tt.TailtuneClassifier.load(tmp_path / "m")
    torch.testing.assert_close(torch.as_tensor(loaded.decision_function(texts)),
                               torch.as_tensor(clf.decision_function(texts)))
    plain.save(tmp_path / "p")  # an empty memory loads as one
    assert len(tt.TailtuneClassifier.load(tmp_path / "p").model_.head.memory) == 0
    # a full save from before the memory existed (no head.memory* keys) loads, strictly, with an empty one
    full = tt.TailtuneClassifier("auto", tiny_bert, stages=[], train_config=config["train_config"]).fit(texts, labels,
                                                                                                   dev=dev)
    full.save(tmp_path / "f")
    weights = tmp_path / "f" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        stamp = f.metadata()
    save_file({k: v for k, v in load_file(weights).items() if not k.startswith("head.memory")}, str(weights),
              metadata=stamp)
    old = tt.TailtuneClassifier.load(tmp_path / "f")
    assert len(old.model_.head.memory) == 0
    torch.testing.assert_close(torch.as_tensor(old.decision_function(texts)),
                               torch.as_tensor(full.decision_function(texts)))
    tasks = TaskSet()
    tasks.add(tmp_path / "m", "m")
    tasks.add(tmp_path / "p", "p")
    mixed = tasks.logits(texts[:6], ["m", "p"] * 3)
    torch.testing.assert_close(torch.stack(mixed[::2]), torch.as_tensor(clf.decision_function(texts[:6:2])),
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="memory"):
        tt.config_from_preset("cls", stages=["memory"])  # the MLP head has no memory: refused before training
    with pytest.raises(ConfigError, match="memory_weight=1.5: the weight of the memory"):
        tt.config_from_preset("auto", stages=["memory"], memory_weight=1.5)
    assert tt.config_from_preset("auto", memory_weight=0.5).options["memory_weight_from_dev"] is False  # (as τ)
    assert tt.config_from_preset("auto").options["memory_weight_from_dev"] is True


def test_memory_weight_is_chosen_on_dev_and_the_memory_capped(tiny_bert, toy, tmp_path, monkeypatch):
    from tailtune.objectives import smallest_within_one_se
    from tailtune.stages.memory import MEMORY_WEIGHTS, MemoryOptions, MemoryStage, thin
    # the cap: every class keeps min(n_c, cap) for the largest cap that fits, a larger class a seeded sample
    labels = torch.tensor([0] * 10 + [1] * 3 + [2])
    kept = thin(labels, 8, seed=3)
    assert torch.bincount(labels[kept]).tolist() == [4, 3, 1] and torch.equal(kept, thin(labels, 8, seed=3))
    assert torch.equal(thin(labels, 14), torch.arange(14)) and len(thin(labels, 3)) == 3  # (cap 1: one each)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):  # the cap is the largest that fits (the bisection against a search of every cap)
        labels = torch.randint(0, 7, (200,), generator=g) ** 2 % 7  # (uneven classes)
        size = int(torch.randint(1, 200, (1,), generator=g))
        counts = torch.bincount(labels)
        cap = max(c for c in range(int(counts.max()) + 1) if counts.clamp(max=c).sum() <= size)
        assert torch.equal(torch.bincount(labels[thin(labels, size)], minlength=len(counts)), counts.clamp(max=cap))
    texts, labels = toy
    cfg = tt.TrainConfig(epochs=1, batch_size=8, progress=False, seed=0)
    clf = tt.TailtuneClassifier("auto", tiny_bert, stages=[], train_config=cfg).fit(texts, labels)
    head, n_dev = clf.model_.head, 50

    def run(dev_f1: dict, size: int = 10_000) -> tuple[MemoryStage, list[str], dict]:
        """The stage with a dev set that scores as ``dev_f1`` says for each λ the head holds when asked."""
        stage, lines, asked = MemoryStage(MemoryOptions(memory_size=size)), [], {}

        def evaluate(fit_calibration_first: bool = False, head_only: bool = False) -> dict:
            lam = min(MEMORY_WEIGHTS, key=lambda w: abs(w - float(head.memory_weight)))  # (a float32 buffer)
            asked[lam] = fit_calibration_first and head_only  # (τ fitted anew, as the final one will be; the head)
            return {"macro_f1": dev_f1[lam], "n": n_dev}
        stage.run(clf.model_, tt.TextDataset(texts, labels), cfg, evaluate, lines.append)
        assert list(asked) == list(MEMORY_WEIGHTS) and all(asked.values())
        return stage, lines, asked

    better = {0.0: 0.60, 0.1: 0.62, 0.25: 0.68, 0.5: 0.75, 0.75: 0.76, 1.0: 0.70}  # one SE at 0.76 of 50: 0.060
    stage, lines, _ = run(better)
    assert smallest_within_one_se(better, n_dev)[0] == 0.5 == float(head.memory_weight)  # (0.68 < 0.76 − 0.060 < 0.75)
    assert stage.fitted_options == {"memory_weight": 0.5} and len(head.memory) == len(texts)
    assert "λ = 0.5 chosen on dev" in lines[0] and "0.75: 0.7600" in lines[0]
    stage, lines, _ = run({lam: 0.6 + 0.01 * lam for lam in MEMORY_WEIGHTS}, size=9)  # within noise: none kept
    assert stage.fitted_options == {"memory_weight": 0.0} and len(head.memory) == 0 and float(head.memory_weight) == 0
    assert lines[0].startswith(f"memory: none kept (read 9 training texts of {len(texts)} (32 floats each))")
    clf.save(tmp_path / "forgot")  # a forgotten memory saves (its empty tensors own their storage) and loads empty
    assert len(tt.TailtuneClassifier.load(tmp_path / "forgot").model_.head.memory_labels) == 0
    # without a dev set there is nothing to choose on: no memory, as τ stays 0; a λ given is used as given
    stage, lines = MemoryStage(MemoryOptions()), []
    stage.run(clf.model_, tt.TextDataset(texts, labels), cfg, None, lines.append)
    assert stage.fitted_options == {"memory_weight": 0.0} and len(head.memory) == 0 and "no dev set" in lines[0]
    MemoryStage(MemoryOptions(memory_weight=0.25, memory_weight_from_dev=False)).run(
        clf.model_, tt.TextDataset(texts, labels), cfg, None)
    assert len(head.memory) == len(texts) and float(head.memory_weight) == 0.25
    # fitted for real: the λ chosen is what the save records and the head holds
    dev = tt.TextDataset(texts[:9], labels[:9])
    lines, reads = [], []
    read_vectors = Classifier.read_vectors
    monkeypatch.setattr(Classifier, "read_vectors", lambda self, enc, *a: reads.append(len(enc)) or read_vectors(
        self, enc, *a))
    fitted = tt.TailtuneClassifier("auto", tiny_bert, stages=["memory"], train_config=cfg).fit(texts, labels, dev=dev,
                                                                                               log=lines.append)
    line = next(x for x in lines if x.startswith("memory: "))
    chosen = fitted.config.to_dict()["options"]["memory_weight"]
    assert f"λ = {chosen:g} chosen on dev" in line and float(fitted.model_.head.memory_weight) == chosen
    assert len(fitted.model_.head.memory) == (len(texts) if chosen else 0)
    # the encoder read dev once, not once per λ (before it, the training texts for the head's prototypes and for the
    # memory): each λ is a pass of the head alone, whose scores are the whole model's
    assert reads == [len(texts), len(texts), len(dev)]
    model, enc = fitted.model_, fitted.model_.encode(dev.texts)
    index = torch.tensor([model.labels.index(y) for y in labels])
    model.head.set_memory(read_vectors(model, model.encode(texts)), index, 0.5)
    model.train()  # (as after training: the head's dropout is off when it scores)
    torch.testing.assert_close(model.head_scores(read_vectors(model, enc)),
                               fitted._scores(model, enc, calibrated=False), atol=1e-5, rtol=1e-4)
    # a memory too small for one text of every class is refused before the backbone loads (it would stay empty)
    with pytest.raises(ConfigError, match=f"memory_size=2: .* fewer than the {len(set(labels))} classes"):
        tt.TailtuneClassifier("auto", str(tmp_path / "no-such-backbone"), stages=["memory"], memory_size=2,
                              train_config=cfg).fit(texts, labels, dev=dev)
    small = tt.TailtuneClassifier("auto", tiny_bert, stages=["memory"], memory_size=len(set(labels)),
                                  memory_weight=0.5, train_config=cfg).fit(texts, labels, dev=dev)
    assert sorted(small.model_.head.memory_labels.tolist()) == list(range(len(set(labels))))  # (one text of each)
