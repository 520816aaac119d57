"""Early exit: one classifier per layer, exits that leave the batch, the DeeBERT second stage."""
import json

import pytest
import torch

import tailtune as tt
from tailtune.early_exit import exit_curve, predict_early_exit
from tailtune.training import predict_logits


def _layer_probs(model, enc):
    from tailtune.batch import collate
    model.eval()
    with torch.no_grad():
        batch = collate(enc, model.tokenizer.pad_token_id, torch.device("cpu"))
        hidden = model.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        x, _ = model.readout(hidden, batch["attention_mask"], batch["position"])
        return model.head.layer_logits(x).softmax(-1)  # (rows, layers, classes)


def _median_first_entropy(model, enc):
    p = _layer_probs(model, enc)[:, 0]
    entropy = -(p * p.log()).sum(-1)
    return float(entropy.median()) + 1e-6


def _fit(backbone, toy, **options):
    texts, labels = toy
    clf = tt.TailtuneClassifier("cls", backbone, head="early-exit", train_config=tt.TrainConfig(
        epochs=4, batch_size=8, lr=1e-3, head_lr=1e-2, seed=1, progress=False), **options)
    return clf.fit(texts, labels, dev=tt.TextDataset(texts[:12], labels[:12]))


@pytest.mark.parametrize("trains", ["all", "adapter", "lora", "prefix"])
def test_exit_at_its_limit_equals_the_full_model_and_batches_equal_one_by_one(tiny_bert, toy, trains):
    texts, _ = toy
    clf = _fit(tiny_bert, toy, trains=trains)
    model = clf.model_
    enc = model.encode(texts)
    full = predict_logits(model, enc)
    from tailtune.batch import collate
    b = collate(enc[:4], model.tokenizer.pad_token_id, torch.device("cpu"))
    with torch.no_grad():  # every layer's states (embeddings + 2 layers) where the exits read them; scoring at full
        every, scored = (model.features(b["input_ids"], b["attention_mask"], scoring=s) for s in (False, True))
    assert every.shape[2] == 3 and scored.shape[2] == 1  # depth reads the last one alone
    torch.testing.assert_close(scored[:, :, 0], every[:, :, -1])
    never, used = predict_early_exit(model, enc, "entropy", 0.0)  # the threshold at its limit: nobody leaves early
    torch.testing.assert_close(never, full, atol=1e-5, rtol=1e-4)
    assert used.tolist() == [2] * len(texts)
    threshold = _median_first_entropy(model, enc)  # about half the rows leave after the first layer
    some, used = predict_early_exit(model, enc, "entropy", threshold, batch_size=16)
    assert 1 < used.float().mean() < 2
    one_by_one = [predict_early_exit(model, [e], "entropy", threshold) for e in enc]
    torch.testing.assert_close(torch.cat([s for s, _ in one_by_one]), some, atol=1e-5, rtol=1e-4)
    assert torch.cat([u for _, u in one_by_one]).tolist() == used.tolist()


def test_rules_and_the_api(tiny_bert, toy):
    texts, labels = toy
    clf = _fit(tiny_bert, toy)
    enc = clf.model_.encode(texts)
    assert predict_early_exit(clf.model_, enc, "confidence", 0.0)[1].tolist() == [2] * len(texts)
    assert predict_early_exit(clf.model_, enc, "confidence", 1e-6)[1].tolist() == [1] * len(texts)
    assert predict_early_exit(clf.model_, enc, "patience", None, 1)[1].tolist() == [1] * len(texts)
    full = clf.predict(texts)
    clf.set_early_exit("entropy", _median_first_entropy(clf.model_, enc))
    fast = clf.predict(texts)
    assert clf.layers_used_.float().mean() < 2 and len(fast) == len(full)
    curve = exit_curve(clf.model_, enc, labels, [0.0, 0.5, 2.0])
    assert [round(c["mean_layers"], 3) for c in curve][0] == 2.0 and curve[-1]["mean_layers"] == 1.0
    full, never = curve[0], curve[1]  # the full-depth reference first; threshold 0 lets nobody leave: the same answers
    assert full["threshold"] is None and full["rule"] == "full-depth" and full["f1_share"] == 1.0
    assert never["threshold"] == 0.0 and never["macro_f1"] == full["macro_f1"] and never["f1_share"] == 1.0
    assert all(c["speedup"] > 0 for c in curve)
    again = exit_curve(clf.model_, enc, labels, [0.5], reference=full)  # a second rule's curve: no second full pass
    assert again[0] is full and again[1]["speedup"] == full["seconds"] / again[1]["seconds"]
    best = exit_curve(clf.model_, enc, labels, [0.5], repeats=3)  # best of 3: every run kept, the fastest timed
    assert all(len(c["all_seconds"]) == 3 and c["seconds"] == min(c["all_seconds"]) for c in best)
    assert [c["macro_f1"] for c in best] == [full["macro_f1"], curve[2]["macro_f1"]]
    with pytest.raises(tt.ConfigError, match="repeats=0"):
        exit_curve(clf.model_, enc, labels, [0.5], repeats=0)
    # normalized-entropy: the entropy threshold as a share of ln(classes), the same layers as the absolute rule
    import math
    classes = len(clf.labels_)
    h = _median_first_entropy(clf.model_, enc)
    absolute = predict_early_exit(clf.model_, enc, "entropy", h)
    relative = predict_early_exit(clf.model_, enc, "normalized-entropy", h / math.log(classes))
    assert relative[1].tolist() == absolute[1].tolist() and 1 < relative[1].float().mean() < 2
    torch.testing.assert_close(relative[0], absolute[0])
    assert predict_early_exit(clf.model_, enc, "normalized-entropy", 1.0 + 1e-6)[1].tolist() == [1] * len(texts)
    with pytest.raises(tt.ConfigError, match="not one of"):  # the function too, not only the API, refuses
        predict_early_exit(clf.model_, enc, "entropie", 0.5)
    for bad, match in ((dict(rule="entropie"), "not one of"), (dict(threshold=-0.1), "0 or more"),
                       (dict(patience=-1), "0 or more")):
        with pytest.raises(tt.ConfigError, match=match):
            clf.set_early_exit(**bad)
    with pytest.raises(tt.ConfigError, match="head='early-exit'"):
        tt.TailtuneClassifier("cls", tiny_bert).fit(texts, labels).set_early_exit()


def test_two_stage_training_trains_the_inner_classifiers_last(tiny_bert, toy):
    texts, labels = toy
    with pytest.raises(tt.ConfigError, match="add it, stages=\\['exit-heads'\\]"):
        tt.config_from_preset("cls", head="early-exit", exit_training="two-stage")
    import tailtune.stages.exit_heads as stage
    moved = []
    real = stage.train

    def record(model, *a, **k):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = real(model, *a, **k)
        moved.append({n for n, p in model.named_parameters() if not torch.equal(p, before[n])})
        return out
    stage.train = record
    try:
        _fit(tiny_bert, toy, exit_training="two-stage", stages=["exit-heads"], exit_heads_epochs=2)
    finally:
        stage.train = real
    assert moved[0] and all(n.startswith("head.exits.0.") for n in moved[0])  # the inner one only


def test_self_distillation_teaches_the_inner_classifiers_the_last_ones_distribution(tiny_bert, toy):
    texts, labels = toy
    with pytest.raises(tt.ConfigError, match="add it, stages=\\['exit-heads'\\] \\(--stages exit-heads\\)"):
        tt.config_from_preset("cls", head="early-exit", exit_training="self-distill")
    with pytest.raises(tt.ConfigError, match="--stages contrastive,exit-heads"):  # the preset's own stages kept
        tt.config_from_preset("auto", head="early-exit", exit_training="self-distill")
    short, long = (_fit(tiny_bert, toy, exit_training="self-distill", stages=["exit-heads"], exit_heads_epochs=e,
                        exit_heads_lr=1e-2) for e in (0.1, 8))
    enc = short.model_.encode(texts)
    p_short, p_long = _layer_probs(short.model_, enc), _layer_probs(long.model_, enc)
    torch.testing.assert_close(p_short[:, -1], p_long[:, -1])  # the stage leaves the last classifier alone

    def kl(p):  # KL(last || first) per row, the stage's loss
        return (p[:, -1] * (p[:, -1].log() - p[:, 0].log())).sum(-1).mean()
    assert kl(p_long) < 0.5 * kl(p_short)
    # the loss itself: zero for an inner classifier that says what the last one says
    head = long.model_.head
    head.exits[0].load_state_dict(head.exits[1].state_dict())
    x = torch.randn(4, 3, long.model_.encoder.config.hidden_size)
    x[:, 1] = x[:, 2]
    head.training_mode = "distill"
    logits = head(x)
    assert float(head.loss(logits, x, None, torch.zeros(4, dtype=torch.long), None)) == pytest.approx(0.0, abs=1e-6)
    x[:, 1] = torch.randn(4, x.shape[-1])
    assert float(head.loss(logits, x, None, torch.zeros(4, dtype=torch.long), None)) > 0


def test_self_distillation_also_learns_from_unlabelled_texts_and_other_classifiers_refuse_them(tiny_bert, toy, tmp_path,
                                                                                                capsys):
    texts, labels = toy
    unlabeled = [f"{a} and {b}" for a, b in zip(texts, texts[5:] + texts[:5])]  # texts the training set lacks
    dev = tt.TextDataset(texts[:12], labels[:12])
    import tailtune.stages.exit_heads as stage
    sizes, real = [], stage.train

    def record(model, examples, *a, **k):
        sizes.append(len(examples))
        return real(model, examples, *a, **k)

    def fit(extra=None, **options):
        clf = tt.TailtuneClassifier("cls", tiny_bert, head="early-exit", **options, train_config=tt.TrainConfig(
            epochs=4, batch_size=8, lr=1e-3, head_lr=1e-2, seed=1, progress=False))
        return clf.fit(texts, labels, dev=dev, **({"unlabeled": extra} if extra is not None else {}))
    distil = {"exit_training": "self-distill", "stages": ["exit-heads"], "exit_heads_epochs": 4, "exit_heads_lr": 1e-2}
    stage.train = record
    try:
        plain, taught = fit(**distil), fit(unlabeled, **distil)
    finally:
        stage.train = real
    assert sizes == [len(texts), len(texts) + len(unlabeled)]  # the stage read the unlabelled texts too
    assert taught.save_metadata()["unlabeled_texts"] == len(unlabeled) and "unlabeled_texts" not in plain.save_metadata()
    enc = plain.model_.encode(unlabeled)
    p_plain, p_taught = _layer_probs(plain.model_, enc), _layer_probs(taught.model_, enc)
    torch.testing.assert_close(p_plain[:, -1], p_taught[:, -1])  # the last classifier is the same run's

    def kl(p):  # KL(last || first) per row on the unlabelled texts: what the first exit learnt to imitate there
        return float((p[:, -1] * (p[:, -1].log() - p[:, 0].log())).sum(-1).mean())
    assert kl(p_taught) < 0.5 * kl(p_plain)
    # no use for them (DeeBERT's stage trains on labels; no exits, no MLM head): refused before the backbone loads
    # (here a path that does not exist, which would fail to load), so before a download or any training
    for options in ({"head": "early-exit", "exit_training": "two-stage", "stages": ["exit-heads"]}, {"head": "mlp"}):
        clf = tt.TailtuneClassifier("cls", str(tmp_path / "no-such-backbone"), **options,
                                    train_config=tt.TrainConfig(epochs=1, progress=False))
        with pytest.raises(tt.ConfigError, match="no use for unlabelled texts"):
            clf.fit(texts, labels, dev=dev, unlabeled=unlabeled)
        assert not hasattr(clf, "model_")
    pairs = tt.TextDataset(texts, labels, texts_b=texts)
    with pytest.raises(tt.ConfigError, match="pairs two texts"):
        tt.TailtuneClassifier("cls", str(tmp_path / "no-such-backbone"), head="early-exit", **distil).fit(
            pairs, dev=pairs, unlabeled=unlabeled)
    # the command line: --unlabeled FILE (one text per line)
    from tailtune.cli import main
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
    (tmp_path / "unlabeled.txt").write_text("\n".join(unlabeled) + "\n")
    assert main(["train", "--train", str(tmp_path / "train.tsv"), "--backbone", tiny_bert, "--preset", "cls",
                 "--head", "early-exit", "--exit-training", "self-distill", "--stages", "exit-heads", "--epochs", "1",
                 "--unlabeled", str(tmp_path / "unlabeled.txt"), "--no-progress", "--output", str(tmp_path / "ee")]) == 0
    assert f"over {len(texts) - 3} training + {len(unlabeled)} unlabelled texts" in capsys.readouterr().out
    loaded = tt.TailtuneClassifier.load(tmp_path / "ee")  # saved again, it keeps what its training recorded
    saved = json.loads((tmp_path / "ee" / "tailtune.json").read_text())
    again = loaded.save_metadata()
    assert again["unlabeled_texts"] == len(unlabeled) and again["train_result"] == saved["train_result"] is not None


def test_the_contrastive_stage_can_tune_every_joint_exit_weighted_by_depth(tiny_bert, toy):
    import random

    from tailtune.batch import collate
    from tailtune.loop import TrainConfig
    from tailtune.stages.contrastive import ContrastiveOptions, PairJob, sample_pairs
    texts, labels = toy
    for refused in ({"head": "cosine"}, {"head": "early-exit", "exit_training": "two-stage",
                                         "stages": ["contrastive", "exit-heads"]}):
        with pytest.raises(tt.ConfigError, match="needs joint early exit"):
            tt.config_from_preset("auto", contrastive_every_exit=True, **refused)
    clf = _fit(tiny_bert, toy, readout="mean", exit_head="cosine", stages=["contrastive"], contrastive_max_pairs=32)
    model = clf.model_.eval()  # no dropout: the job's losses and the hand-made ones read the same vectors
    data, cfg = tt.TextDataset(texts, labels), TrainConfig(seed=1, progress=False)
    pairs = sample_pairs(data.labels, 12, random.Random(0))
    with torch.no_grad():
        batch = collate(model.encode(texts), model.tokenizer.pad_token_id, torch.device("cpu"))
        hidden = model.features(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        x, _ = model.readout(hidden, batch["attention_mask"], batch["position"])  # (rows, layers + 1, hidden)
        a, b = x[[p[0] for p in pairs], 1:], x[[p[1] for p in pairs], 1:]
        target = torch.tensor([p[2] for p in pairs])
        per_layer = ((torch.cosine_similarity(a, b, dim=-1) - target[:, None]) ** 2).mean(0)  # (layers,)
        depth = torch.arange(1, per_layer.numel() + 1, dtype=torch.float)
        every = PairJob(model, data, ContrastiveOptions(contrastive_every_exit=True), cfg).loss(pairs, 0)
        last = PairJob(model, data, ContrastiveOptions(), cfg).loss(pairs, 0)  # the default: the last layer
        torch.testing.assert_close(every, (per_layer * depth).sum() / depth.sum())  # PABEE's weights
        torch.testing.assert_close(last, per_layer[-1])
        assert not torch.allclose(every, last)
        model.head.training_mode = "two-stage"  # DeeBERT / FastBERT tune the body for the last classifier only
        job = PairJob(model, data, ContrastiveOptions(contrastive_every_exit=True), cfg)
        torch.testing.assert_close(job.loss(pairs, 0), per_layer[-1])


def test_early_exit_over_the_verbalizer_head_with_soft_prompts(tiny_bert, toy):
    texts, labels = toy
    clf = tt.TailtuneClassifier("soft-prompt", tiny_bert, head="early-exit", exit_head="verbalizer", soft_tokens=2,
                                template="{text} it is about {mask} .", train_config=tt.TrainConfig(
                                    epochs=2, batch_size=8, lr=1e-3, seed=1, progress=False))
    clf.fit(texts, labels)
    model = clf.model_
    enc = model.encode(texts)
    torch.testing.assert_close(predict_early_exit(model, enc, "entropy", 0.0)[0], predict_logits(model, enc),
                               atol=1e-5, rtol=1e-4)
    threshold = _median_first_entropy(model, enc)
    some, used = predict_early_exit(model, enc, "entropy", threshold, batch_size=16)
    one_by_one = [predict_early_exit(model, [e], "entropy", threshold) for e in enc]
    torch.testing.assert_close(torch.cat([s for s, _ in one_by_one]), some, atol=1e-5, rtol=1e-4)


def test_mixed_task_batches_exit_row_by_row_as_each_task_alone(tiny_bert, toy, tmp_path):
    """A TaskSet batch that mixes early-exit task modules (LoRA, prefix) and an ordinary one: each row leaves at
    its own task's exit rule, with the scores and depth it gets predicted by its classifier alone."""
    from tailtune.multitask import TaskSet
    texts, labels = toy
    for trains in ("lora", "prefix"):
        _fit(tiny_bert, toy, trains=trains).save(tmp_path / trains)
    tt.TailtuneClassifier("cls", tiny_bert, trains="adapter", train_config=tt.TrainConfig(
        epochs=2, batch_size=8, lr=1e-3, seed=1, progress=False)).fit(texts, labels).save(tmp_path / "plain")
    names = ["lora", "prefix", "plain"]
    tasks = [names[i % 3] for i in range(len(texts))]
    mixed, full = TaskSet(early_exit=True), TaskSet()
    for name in names:
        mixed.add(tmp_path / name)
        full.add(tmp_path / name)
    thresholds = {}
    for name in ("lora", "prefix"):  # about half of each task's rows leave after the first layer
        model = mixed.tasks[name]
        thresholds[name] = model.head.threshold = _median_first_entropy(model, model.encode(texts))
    got = mixed.logits(texts, tasks, batch_size=16)
    for i, (text, task) in enumerate(zip(texts, tasks)):
        if task == "plain":  # no exits: its full-depth scores
            torch.testing.assert_close(got[i], full.logits([text], [task])[0], atol=1e-5, rtol=1e-4)
            continue
        alone = tt.TailtuneClassifier.load(tmp_path / task, "cpu").model_
        want, _ = predict_early_exit(alone, alone.encode([text]), "entropy", thresholds[task])
        torch.testing.assert_close(got[i], want[0], atol=1e-5, rtol=1e-4)
    early = [i for i, t in enumerate(tasks) if t != "plain"]
    assert any(not torch.allclose(got[i], full.logits([texts[i]], [tasks[i]])[0], atol=1e-4) for i in early)


def test_inner_exits_can_be_another_head_than_the_last_one(tiny_bert, toy, tmp_path):
    from tailtune.heads.cosine import CosineHead
    from tailtune.heads.mlp import MLPHead
    texts, _ = toy
    for bad, match in (("label-decoder", "exit_inner_head='label-decoder': .* reads one vector"),
                       ("nope", "nope")):
        with pytest.raises(tt.ConfigError, match=match):
            tt.config_from_preset("cls", head="early-exit", exit_inner_head=bad)
    with pytest.raises(tt.ConfigError, match="exit_inner_head='verbalizer' needs readout 'mask'"):
        tt.config_from_preset("auto", head="early-exit", exit_inner_head="verbalizer", input_format="template", readout="mean",
                              template="{text} {mask} .")
    options = {"readout": "mean", "exit_head": "cosine", "exit_inner_head": "mlp", "exit_training": "self-distill",
               "stages": ["exit-heads"], "exit_heads_lr": 1e-2}
    started = []
    real = CosineHead.init_from_prototypes

    def record(self, prototypes):
        started.append(self)
        return real(self, prototypes)
    CosineHead.init_from_prototypes = record
    try:
        clf = _fit(tiny_bert, toy, **options)
    finally:
        CosineHead.init_from_prototypes = real
    exits = clf.model_.head.exits
    assert [type(h) for h in exits] == [MLPHead] * (len(exits) - 1) + [CosineHead]
    assert started == [exits[-1]]  # the cosine classifier still starts from its layer's class prototypes
    enc = clf.model_.encode(texts)
    scores, used = predict_early_exit(clf.model_, enc, "normalized-entropy", 0.9)
    assert used.min() == 1  # the MLP exits answer (and, at so high a threshold, let rows leave)
    clf.save(tmp_path / "m")
    again = tt.TailtuneClassifier.load(tmp_path / "m")
    assert again.config.of("head").exit_inner_head == "mlp"
    torch.testing.assert_close(predict_early_exit(again.model_, enc, "normalized-entropy", 0.9)[0], scores)
    # auto (the fastbert preset's): MLPs where self-distillation has unlabelled texts, else the exit head; the
    # choice is what a save records
    assert tt.config_from_preset("fastbert").of("head").exit_inner_head == "auto"
    auto = {**options, "exit_inner_head": "auto", "exit_heads_epochs": 1}
    for extra, inner in ((None, CosineHead), ([t + " again" for t in texts], MLPHead)):
        clf = tt.TailtuneClassifier("cls", tiny_bert, head="early-exit", **auto, train_config=tt.TrainConfig(
            epochs=1, batch_size=8, seed=1, progress=False))
        clf.fit(texts, toy[1], **({"unlabeled": extra} if extra else {}))
        assert type(clf.model_.head.exits[0]) is inner and type(clf.model_.head.exits[-1]) is CosineHead
        assert clf.config.of("head").exit_inner_head == "auto"  # (a refit on other data chooses again)
        clf.save(tmp_path / inner.__name__)
        saved = tt.TailtuneClassifier.load(tmp_path / inner.__name__).config.of("head").exit_inner_head
        assert saved == ("same" if inner is CosineHead else "mlp")


def test_a_simulated_rule_gives_the_exit_pass_answers_and_an_agreement_target_chooses_the_threshold(
        tiny_bert, toy, tmp_path):
    import itertools

    from tailtune.early_exit import candidate_thresholds, choose_by_agreement, layer_probs, simulate_exits
    texts, labels = toy
    clf = _fit(tiny_bert, toy)
    model, enc = clf.model_, clf.model_.encode(texts)
    probs, mixed = layer_probs(model, enc, batch_size=16), False
    assert probs.shape == (len(texts), 2, len(model.labels))
    torch.testing.assert_close(probs[:, -1], predict_logits(model, enc).softmax(-1), atol=1e-5, rtol=1e-4)
    for rule, threshold, patience in [("entropy", _median_first_entropy(model, enc), 0), ("normalized-entropy", 0.9, 0),
                                      ("confidence", float(probs[:, 0].amax(-1).median()), 0), ("patience", 0.0, 1)]:
        scores, used = predict_early_exit(model, enc, rule, threshold, patience)
        answers, simulated = simulate_exits(probs, rule, threshold, patience)
        assert simulated.tolist() == used.tolist() and answers.tolist() == scores.argmax(-1).tolist()
        mixed = mixed or 1 < float(used.float().mean()) < 2  # (some rows leave early, some do not)
    assert mixed
    # the most eager setting that keeps the target: every more eager candidate falls short of it
    full = probs[:, -1].argmax(-1)
    for rule, target in itertools.product(("normalized-entropy", "confidence", "patience"), (0.5, 0.9, 1.0)):
        options, agreement, layers, curve = choose_by_agreement(probs, rule, target)
        assert [c[0] for c in curve] == candidate_thresholds(rule, len(model.labels), 2)
        candidates = candidate_thresholds(rule, len(model.labels), 2)
        assert agreement >= target
        eager = candidates[candidates.index(options) + 1:] if options else candidates
        for later in eager:
            answers, _ = simulate_exits(probs, rule, later.get("exit_threshold", 0.0), later.get("exit_patience", 0))
            assert float((answers == full).float().mean()) < target
    # the stage: a tenth of the unlabelled texts held out of its training, the threshold chosen on them and saved
    import tailtune.stages.exit_heads as stage
    sizes, real = [], stage.train

    def record(model, examples, *a, **k):
        sizes.append(len(examples))
        return real(model, examples, *a, **k)
    unlabeled = [f"{a} {b} {c}" for a, b, c in itertools.islice(itertools.product(texts[:12], texts[5:17], texts[:9]), 1000)]
    options = {"exit_training": "self-distill", "stages": ["exit-heads"], "exit_heads_epochs": 1,
               "exit_rule": "normalized-entropy", "exit_threshold": 0.33, "exit_agreement": 0.9}
    lines: list[str] = []
    stage.train = record
    try:
        chosen = tt.TailtuneClassifier("cls", tiny_bert, head="early-exit", **options, train_config=tt.TrainConfig(
            epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2, seed=1, progress=False)).fit(
            texts, labels, dev=tt.TextDataset(texts[:12], labels[:12]), unlabeled=unlabeled, log=lines.append)
    finally:
        stage.train = real
    assert sizes[-1] == len(texts) + 900  # 100 held out
    said = next(line for line in lines if line.startswith("exit threshold chosen"))
    assert "of 100 held-out unlabelled texts" in said and "(target 90 %)" in said
    assert lines[lines.index(said) + 1].startswith("  agreement with full depth / mean layers, by normalized-entropy "
                                                   "threshold: 0.05: ")  # (every candidate, for a user to choose by)
    head = chosen.model_.head
    assert head.threshold == chosen.model_.config.of("head").exit_threshold != 0.33
    assert chosen.config.of("head").exit_threshold == 0.33  # (what was asked; the model holds the choice)
    chosen.save(tmp_path / "chosen")
    again = tt.TailtuneClassifier.load(tmp_path / "chosen")
    assert again.model_.head.threshold == head.threshold
    # too few unlabelled texts to hold a hundred out: the threshold stays as given, and the log says why
    lines.clear()
    kept = tt.TailtuneClassifier("cls", tiny_bert, head="early-exit", **options, train_config=tt.TrainConfig(
        epochs=1, batch_size=8, seed=1, progress=False)).fit(texts, labels, dev=tt.TextDataset(texts[:12], labels[:12]),
                                                             unlabeled=unlabeled[:500], log=lines.append)
    assert kept.model_.head.threshold == 0.33 and any("kept as given" in line for line in lines)
    with pytest.raises(tt.ConfigError, match="between 0 and 1"):
        tt.config_from_preset("fastbert", exit_agreement=99)
    with pytest.raises(tt.ConfigError, match="only self-distillation takes unlabelled texts"):
        tt.config_from_preset("deebert", exit_agreement=0.99)
