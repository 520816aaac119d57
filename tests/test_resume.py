"""Checkpoints, resume and gradient accumulation of the one training loop."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import tailtune as tt
from tailtune.cli import main
from conftest import TOY_LABELS, TOY_TEXTS


@pytest.fixture
def data(tmp_path):
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS * 4, TOY_LABELS * 4))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + rows + "\n")
    (tmp_path / "test.tsv").write_text("text\tlabel\n" + rows + "\n")
    return tmp_path


def _args(data, backbone, out, *extra):
    return ["train", "--train", str(data / "train.tsv"), "--test", str(data / "test.tsv"), "--backbone", backbone,
            "--output", str(out), "--batch-size", "4", "--lr", "1e-3", "--seed", "3", "--no-progress",
            "--eval-every", "5", *extra]


def _same_model(a, b):
    ta = tt.TailtuneClassifier.load(a, device="cpu")
    tb = tt.TailtuneClassifier.load(b, device="cpu")
    for (n, p), (_, q) in zip(ta.model_.named_parameters(), tb.model_.named_parameters()):
        assert torch.equal(p, q), n
    assert json.loads((a / "test_report.json").read_text()) == json.loads((b / "test_report.json").read_text())


def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_bert, data, capsys):
    """A real ``kill -9`` in the middle of training; ``--resume`` ends with the same model and metrics."""
    straight = data / "straight"
    assert main(_args(data, tiny_bert, straight, "--epochs", "40")) == 0
    killed = data / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "tailtune.cli", *_args(data, tiny_bert, killed, "--epochs", "40",
                                                                          "--save-every", "7")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state = killed / "checkpoint" / "state.json"
    deadline = time.time() + 600  # generous: on a loaded machine the subprocess starts and steps slowly
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 21:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; give it more epochs"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads(state.read_text())["step"]
    assert 21 <= step < 360 and not (killed / "tailtune.json").exists()
    capsys.readouterr()
    assert main(_args(data, tiny_bert, killed, "--epochs", "40", "--save-every", "7", "--resume")) == 0
    assert f"resuming from {killed / 'checkpoint'} at step {step}" in capsys.readouterr().out
    assert not (killed / "checkpoint").exists()  # the finished classifier replaced it
    _same_model(straight, killed)


class _Stop(Exception):
    """An interruption in the middle of a run (raised from its log)."""


def _stop_at_12(line: str) -> None:
    if line.startswith("step 12/"):
        raise _Stop


@pytest.mark.parametrize("average", [None, 0.2], ids=["weights", "weight-average"])
def test_interrupted_api_run_resumes_to_the_same_result(tiny_bert, toy, tmp_path, average):
    texts, labels = toy
    dev = tt.TextDataset(texts[:12], labels[:12])
    cfg = tt.TrainConfig(epochs=6, batch_size=4, lr=1e-3, seed=2, progress=False, eval_every=4, patience=5,
                         weight_average=average)
    straight = tt.TailtuneClassifier("prompt", tiny_bert, train_config=cfg).fit(texts, labels, dev=dev)

    with pytest.raises(_Stop):
        tt.TailtuneClassifier("prompt", tiny_bert, train_config=cfg).fit(
            texts, labels, dev=dev, checkpoint_dir=tmp_path / "ck", log=_stop_at_12)
    with pytest.raises(tt.ConfigError, match="other settings.*lr: 0.001 -> 0.002"):
        tt.TailtuneClassifier("prompt", tiny_bert, train_config=tt.TrainConfig(**{**cfg.to_dict(), "lr": 2e-3})).fit(
            texts, labels, dev=dev, checkpoint_dir=tmp_path / "ck", resume=True)
    resumed = tt.TailtuneClassifier("prompt", tiny_bert, train_config=cfg).fit(
        texts, labels, dev=dev, checkpoint_dir=tmp_path / "ck", resume=True)
    assert resumed.train_result_.history == straight.train_result_.history
    assert resumed.train_result_.best_step == straight.train_result_.best_step
    np.testing.assert_array_equal(resumed.decision_function(texts), straight.decision_function(texts))


def test_a_resumed_head_only_run_keeps_the_body_its_contrastive_stage_tuned(tiny_bert, toy, tmp_path):
    """`auto` few-shot: the contrastive stage tunes the body, then only the head trains. A resumed run skips the
    stage, so its checkpoint must hold the tuned body beside the head (it held only the head: the resumed model
    went back to the pretrained body)."""
    texts, labels = toy
    dev = tt.TextDataset(texts[:12], labels[:12])
    cfg = tt.TrainConfig(epochs=6, batch_size=4, lr=1e-3, head_lr=1e-2, seed=2, progress=False, eval_every=4,
                         patience=None)
    kw = {"contrastive_max_pairs": 16, "contrastive_lr": 1e-3}
    straight = tt.TailtuneClassifier("auto", tiny_bert, train_config=cfg, **kw).fit(texts, labels, dev=dev)

    with pytest.raises(_Stop):
        tt.TailtuneClassifier("auto", tiny_bert, train_config=cfg, **kw).fit(
            texts, labels, dev=dev, checkpoint_dir=tmp_path / "ck", log=_stop_at_12)
    lines: list[str] = []
    resumed = tt.TailtuneClassifier("auto", tiny_bert, train_config=cfg, **kw).fit(
        texts, labels, dev=dev, checkpoint_dir=tmp_path / "ck", resume=True, log=lines.append)
    assert any(line.startswith("fine-tuning: only the head") for line in lines)
    assert not any(line.startswith("contrastive stage") for line in lines)  # the stage did not run again
    for (n, p), (_, q) in zip(straight.model_.named_parameters(), resumed.model_.named_parameters()):
        assert torch.equal(p, q), n
    assert resumed.train_result_.history == straight.train_result_.history


def test_gradient_accumulation_equals_one_big_batch(tiny_bert, monkeypatch):
    """Micro-batches of 4 x 2 (or 2 x 4) give the step of one batch of 8. Plain SGD makes the steps
    comparable (Adam turns the last-bit differences of near-zero gradients into full-size steps)."""
    import tailtune.loop as loop
    monkeypatch.setattr(loop, "adamw", lambda groups, *_: torch.optim.SGD(groups))
    texts = ["good film", "bad film", "oil news", "good game", "bad game", "oil price", "good food", "bad food"]
    labels = ["good", "bad", "money", "good", "bad", "money", "good", "bad"]
    results = []
    for batch, accum in ((8, 1), (4, 2), (2, 4)):
        torch.manual_seed(0)
        model = tt.build_classifier(tt.config_from_preset("cls", dropout=0.0), ["bad", "good", "money"], tiny_bert)
        for m in model.encoder.modules():  # no dropout inside the encoder either
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        start = model.head.out.weight.detach().clone()
        r = tt.train(model, tt.TextDataset(texts, labels), tt.TrainConfig(epochs=3, batch_size=batch, grad_accum=accum,
                                                                           lr=1e-1, seed=1, progress=False))
        assert r.steps == 3 and not torch.equal(model.head.out.weight, start)
        results.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for other in results[1:]:
        for n in results[0]:
            torch.testing.assert_close(other[n], results[0][n], atol=1e-6, rtol=1e-5)


def test_checkpoint_holds_no_pickle_and_a_broken_state_is_never_written(tiny_bert, toy, tmp_path):
    texts, labels = toy
    cfg = tt.TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=1, progress=False, save_every=2)

    class Stop(Exception):
        pass
    import tailtune.loop as loop
    real = loop.save_checkpoint

    def save_once(directory, tensors, state):
        real(directory, tensors, state)
        raise Stop
    loop.save_checkpoint = save_once
    try:
        with pytest.raises(Stop):
            tt.TailtuneClassifier("cls", tiny_bert, train_config=cfg).fit(texts, labels, checkpoint_dir=tmp_path / "ck")
    finally:
        loop.save_checkpoint = real
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["best.safetensors", "optimizer.safetensors", "params.safetensors", "rng.safetensors",
                     "state.json"]
    state = json.loads((tmp_path / "ck" / "state.json").read_text())
    assert state["step"] == 2 and state["settings"]["train"]["lr"] == 1e-3
    with pytest.raises(tt.TrainingError, match="diverged"):
        tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(
            epochs=3, batch_size=8, lr=1e12, head_lr=1e12, seed=1, progress=False, save_every=1)).fit(
            texts, labels, checkpoint_dir=tmp_path / "nan")
    if (tmp_path / "nan" / "params.safetensors").exists():  # whatever was kept is finite
        from safetensors.torch import load_file
        assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "nan" / "params.safetensors").values())
