"""The interfaces later entries need, exercised by entries registered only for these tests: a head that
reads every layer and adds an auxiliary loss, and an input format that draws on a pool of training
examples and is re-encoded every epoch."""
import random
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import tailtune as tt
from tailtune.heads import Head
from tailtune.inputs import InputFormat, encode_plain
from tailtune.multitask import TaskSet
from tailtune.registry import HEADS, INPUT_FORMATS, NoOptions
from tailtune.batch import collate


class EveryLayerHead(Head):
    """One linear classifier shared by every layer's [CLS] vector; predicts from the last layer and
    trains on the layer losses weighted by depth (PABEE's weighting)."""

    layers = "all"

    def __init__(self, hidden: int, n_classes: int, n_layers: int):
        super().__init__()
        self.out = nn.Linear(hidden, n_classes)
        self.register_buffer("depth", torch.arange(1, n_layers + 1, dtype=torch.float), persistent=False)

    def forward(self, x, mask=None):  # (batch, layers, hidden) -> (batch, classes)
        return self.out(x[:, -1])

    def loss(self, logits, x, mask, target, objective):
        per_layer = torch.stack([objective(self.out(x[:, k]), target) for k in range(x.shape[1])])
        return (per_layer * self.depth).sum() / self.depth.sum()

    def class_weights(self):
        return self.out.weight, self.out.bias


@dataclass
class PoolOptions:
    pass


class EchoDemonstration(InputFormat):
    """``text . demonstration``: one random pool text, drawn anew every epoch, never the text's own row."""

    resamples = True

    def __init__(self, tokenizer, max_length):
        self.tokenizer, self.max_length, self.pool, self.calls = tokenizer, max_length, None, []

    def set_pool(self, examples):
        self.pool = examples

    def encode(self, texts, texts_b=None, epoch=None, pool_index=None):
        rng = random.Random(epoch)
        drawn = []
        for i in range(len(texts)):
            own = pool_index[i] if pool_index is not None else None
            drawn.append(rng.choice([j for j in range(len(self.pool)) if j != own]))
        self.calls.append((epoch, pool_index, drawn))
        return encode_plain(self.tokenizer, [f"{t} . {self.pool.texts[j]}" for t, j in zip(texts, drawn)], None,
                            self.max_length)


@pytest.fixture
def extra_entries():
    HEADS.register("test-every-layer", NoOptions, description="test only", reads="vector")(
        lambda opts, ctx: EveryLayerHead(ctx.hidden, len(ctx.labels), ctx.layers + 1))
    INPUT_FORMATS.register("test-echo", PoolOptions, description="test only", has_mask=False)(
        lambda opts, ctx: EchoDemonstration(ctx.tokenizer, ctx.config.max_length))
    yield
    HEADS.remove("test-every-layer")
    INPUT_FORMATS.remove("test-echo")


def test_a_head_reads_every_layer_and_adds_its_own_loss(extra_entries, tiny_bert, toy, tmp_path):
    texts, labels = toy
    config = tt.ClassifierConfig(head="test-every-layer", readout="cls", trains="head")
    model = tt.build_classifier(config, ["bad", "good", "money"], tiny_bert)
    batch = collate(model.encode(texts[:4]), model.tokenizer.pad_token_id, torch.device("cpu"))
    features = model.features(batch["input_ids"], batch["attention_mask"])
    assert features.shape == (4, batch["input_ids"].shape[1], 3, 32)  # embeddings + 2 layers
    target = torch.tensor([["bad", "good", "money"].index(y) for y in labels[:4]])
    x = features[:, 0]
    by_hand = sum(k * model.objective(model.head.out(x[:, k - 1]), target) for k in (1, 2, 3)) / 6
    torch.testing.assert_close(model.training_loss(batch, target), by_hand)
    clf = tt.TailtuneClassifier(config=config, backbone=tiny_bert,
                                train_config=tt.TrainConfig(epochs=10, batch_size=8, lr=1e-2, seed=1, progress=False))
    clf.fit(texts, labels, dev=tt.TextDataset(texts, labels))
    assert clf.train_result_.history[-1]["loss"] < clf.train_result_.history[0]["loss"]
    clf.save(tmp_path / "every")  # a frozen-backbone module: it shares a backbone with other tasks
    loaded = tt.TailtuneClassifier.load(tmp_path / "every", device="cpu")
    torch.testing.assert_close(torch.tensor(loaded.decision_function(texts)), torch.tensor(clf.decision_function(texts)))
    from tiny import perturbed_module
    perturbed_module("adapter", tiny_bert, tmp_path / "ad", seed=3)
    tasks = TaskSet()
    tasks.add(tmp_path / "every", "every")
    tasks.add(tmp_path / "ad", "ad")
    mixed = tasks.logits(texts[:6], ["every", "ad"] * 3)
    for name in ("every", "ad"):
        rows = [i for i in range(6) if ["every", "ad"][i % 2] == name]
        alone = tasks.logits([texts[i] for i in rows], [name] * len(rows))
        for i, a in zip(rows, alone):
            torch.testing.assert_close(mixed[i], a, atol=1e-5, rtol=1e-4)


def test_an_input_format_draws_on_the_training_pool_every_epoch(extra_entries, tiny_bert, toy):
    texts, labels = toy
    config = tt.ClassifierConfig(input_format="test-echo", readout="cls", trains="head")
    clf = tt.TailtuneClassifier(config=config, backbone=tiny_bert,
                                train_config=tt.TrainConfig(epochs=3, batch_size=8, lr=1e-2, seed=1, progress=False))
    clf.fit(texts, labels, dev=tt.TextDataset(texts[:6], labels[:6]))
    fmt = clf.model_.input_format
    training = [c for c in fmt.calls if c[1] is not None]
    assert [c[0] for c in training] == [0, 1, 2]  # encoded anew each epoch
    assert training[0][2] != training[1][2]  # with other demonstrations
    for _, pool_index, drawn in training:
        assert all(j != i for i, j in zip(pool_index, drawn))  # never the example itself
    assert not clf.model_.frozen_features  # re-sampled inputs cannot be cached
