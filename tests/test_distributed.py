"""Data-parallel training under `accelerate launch` (2 CPU processes, gloo): the same run as one process
with the same global batch (dev scores gathered from each process's share), and a killed 2-process run
resumes to the same end."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TOY_LABELS, TOY_TEXTS

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def setup(tiny_bert, tmp_path_factory):
    """A dropout-free copy of the tiny model (dropout draws differ between 1 and 2 processes) and data."""
    import shutil
    tmp = tmp_path_factory.mktemp("ddp")
    bb = tmp / "bb"
    shutil.copytree(tiny_bert, bb)
    cfg = json.loads((bb / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (bb / "config.json").write_text(json.dumps(cfg))
    rows = "\n".join(f"{t}\t{y}" for t, y in zip(TOY_TEXTS * 4, TOY_LABELS * 4))
    (tmp / "train.tsv").write_text("text\tlabel\n" + rows + "\n")
    dev = list(zip(TOY_TEXTS, TOY_LABELS))[:-1]  # an odd size: the processes' shares of dev differ
    (tmp / "dev.tsv").write_text("text\tlabel\n" + "\n".join(f"{t}\t{y}" for t, y in dev) + "\n")
    return tmp


def _cmd(tmp, out, processes, *extra):
    args = ["train", "--backbone", str(tmp / "bb"), "--train", str(tmp / "train.tsv"), "--dev", str(tmp / "dev.tsv"),
            "--preset", "cls", "--dropout", "0", "--lr", "1e-3", "--seed", "1", "--no-progress", "--device", "cpu",
            "--batch-size", "4", "--output", str(out), *extra]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
              "--main_process_port", str(29500 + os.getpid() % 1000), "-m", "tailtune.cli"] if processes > 1 \
        else [sys.executable, "-m", "tailtune.cli"]
    return launch + args


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def _run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    said = [x for x in done.stderr.splitlines() if x.startswith("tailtune")]
    assert done.returncode == 0, "\n".join(said) or done.stderr[-2000:]
    return done.stdout


def test_two_processes_equal_one_with_the_same_global_batch(setup):
    one = _run(_cmd(setup, setup / "one", 1, "--grad-accum", "2", "--epochs", "3"))
    two = _run(_cmd(setup, setup / "two", 2, "--epochs", "3"))
    lines = lambda out: [x for x in out.splitlines() if x.startswith("step ")]  # noqa: E731
    assert len(lines(one)) == len(lines(two)) == 3 and two.count("saved to") == 1  # only the main process prints
    for a, b in zip(lines(one), lines(two)):  # same steps, losses and dev scores (4 decimals)
        assert a == b
    p1, p2 = load_file(setup / "one" / "model.safetensors"), load_file(setup / "two" / "model.safetensors")
    # float sums in another order, amplified by AdamW on near-zero gradients: at most a few steps of lr 1e-3
    assert max((p1[k] - p2[k]).abs().max().item() for k in p1) < 5e-3
    assert sum((p1[k] - p2[k]).abs().sum().item() for k in p1) / sum(v.numel() for v in p1.values()) < 1e-4


def test_a_killed_two_process_run_resumes_to_the_same_end(setup):
    straight, killed = setup / "straight", setup / "killed"
    _run(_cmd(setup, straight, 2, "--epochs", "30", "--eval-every", "5"))
    proc = subprocess.Popen(_cmd(setup, killed, 2, "--epochs", "30", "--eval-every", "5", "--save-every", "5"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    state = killed / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["step"] >= 20:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; give it more epochs"
    import psutil  # the launcher's workers live in their own sessions: kill the whole tree
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs([psutil.Process(p) for p in tree[1:] if psutil.pid_exists(p)], timeout=10)
    assert not (killed / "tailtune.json").exists()
    out = _run(_cmd(setup, killed, 2, "--epochs", "30", "--eval-every", "5", "--save-every", "5", "--resume"))
    assert "resuming from" in out
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("var,name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharded_launch_is_refused_before_training(var, name, setup, monkeypatch, capsys):
    """`accelerate launch --use_fsdp / --use_deepspeed` would otherwise run unsharded without a word."""
    from tailtune.cli import main
    monkeypatch.setenv(var, "true")
    out = setup / f"refused-{name}"
    assert main(_cmd(setup, out, 1)[3:]) == 2  # (the arguments after `python -m tailtune.cli`)
    err = capsys.readouterr().err
    assert f"launched with {name}" in err and "--multi_gpu" in err and "Traceback" not in err
    assert not (out / "tailtune.json").exists()
