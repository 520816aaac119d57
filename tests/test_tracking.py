"""Experiment tracking through Accelerate's trackers: TensorBoard event files with the run's scalars."""
import pytest

import tailtune as tt
from conftest import TOY_LABELS, TOY_TEXTS


def test_a_tracked_run_writes_tensorboard_events(tiny_bert, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.chdir(tmp_path)
    dev = tt.TextDataset(TOY_TEXTS, TOY_LABELS)
    cfg = tt.TrainConfig(epochs=2, batch_size=8, progress=False, eval_times=2, track="tensorboard",
                         track_dir=str(tmp_path / "tb"), run_name="toy")
    tt.TailtuneClassifier("cls", tiny_bert, train_config=cfg).fit(TOY_TEXTS * 3, TOY_LABELS * 3, dev=dev)
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for e in events:
        acc = EventAccumulator(str(e.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "dev/macro_f1", "params/trainable", "time/seconds", "memory/peak_mb",
            "dev/best_macro_f1"} <= tags
    # nothing is tracked unless asked
    tt.TailtuneClassifier("cls", tiny_bert, train_config=tt.TrainConfig(epochs=1, batch_size=8, progress=False)).fit(
        TOY_TEXTS * 3, TOY_LABELS * 3)
    assert not (tmp_path / "tailtune-runs").exists()


def test_an_unknown_or_missing_tracker_is_refused_before_training(monkeypatch):
    with pytest.raises(tt.ConfigError, match="not a tracker"):
        tt.TrainConfig(track="tensorbored")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(tt.ConfigError, match="needs the mlflow package: pip install mlflow"):
        tt.TrainConfig(track="mlflow")
