"""Memory and time of two-process training with the optimiser state sharded (an FSDP or DeepSpeed launch) against
plain data parallelism, on the embedded default backbone.

Both runs train the same `cls` classifier (every parameter trains) on the demo data for the same steps, as two CPU
processes of one thread each (`accelerate launch --multi_gpu` and `--use_fsdp`). The peak resident memory of each
worker process is sampled every 20 ms from outside; the runs must log the same steps, losses and dev scores.

    python benchmarks/distributed/sharding.py        # -> benchmarks/results/distributed/sharding.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

LAUNCHES = {"data-parallel": ["--multi_gpu"], "optimiser state sharded (FSDP launch)": ["--use_fsdp"]}


def run(launch: list[str], data: Path, out: Path, steps: int) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2",
           "--main_process_port", str(29600 + os.getpid() % 300), "-m", "tailtune.cli", "train",
           "--train", str(data / "train.tsv"), "--dev", str(data / "test.tsv"), "--preset", "cls", "--device", "cpu",
           "--steps", str(steps), "--eval-every", str(steps // 2), "--batch-size", "16", "--max-length", "64",
           "--no-progress", "--seed", "13", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak: dict[int, float] = {}
    while proc.poll() is None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if "tailtune.cli" in " ".join(child.cmdline()) and "accelerate" not in " ".join(child.cmdline()[:3]):
                    peak[child.pid] = max(peak.get(child.pid, 0.0), child.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.02)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(launch)} failed:\n{stderr[-3000:]}")
    said = re.search(r"moments of ([\d,]+) of ([\d,]+)", stdout)
    return {"seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb_per_worker": sorted(round(v) for v in peak.values()),
            "moments_held_by_main": int(said.group(1).replace(",", "")) if said else None,
            "trainable": int(said.group(2).replace(",", "")) if said else None,
            "steps_logged": [x for x in stdout.splitlines() if x.startswith("step ")],
            "sharding_line": next((x for x in stdout.splitlines() if "sharded over" in x), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--output", default=str(Path(__file__).parents[1] / "results" / "distributed" / "sharding.json"))
    args = ap.parse_args()
    from tailtune.demo import write_demo_data
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_demo_data(data)
        rows = {name: run(launch, data, Path(tmp) / f"run{i}", args.steps) for i, (name, launch) in
                enumerate(LAUNCHES.items())}
    plain, sharded = rows.values()
    result = {"backbone": "embedded default (all-MiniLM-L6-v2)", "processes": 2, "threads_per_process": 1,
              "steps": args.steps, "runs": rows,
              "same_steps_losses_and_dev_scores": plain["steps_logged"] == sharded["steps_logged"],
              "peak_rss_saving_mb_per_worker": [round(a - b) for a, b in zip(plain["peak_rss_mb_per_worker"],
                                                                            sharded["peak_rss_mb_per_worker"])],
              "time_ratio_sharded_over_plain": round(sharded["seconds"] / plain["seconds"], 2)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    for name, r in rows.items():
        print(name, r["seconds"], "s, peak RSS per worker", r["peak_rss_mb_per_worker"], "MB")


if __name__ == "__main__":
    main()
