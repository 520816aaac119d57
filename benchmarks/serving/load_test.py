"""A bounded load test of `tailtune serve` on loopback: 1,000 concurrent requests over 10 task modules.

    python benchmarks/serving/load_test.py --out benchmarks/results/serving/load_test.json

Three runs, each a fresh server process on a free loopback port:
1. 10 task modules (adapters, LoRA, prefixes, soft prompts, probes; perturbed, untrained: the load
   is what is measured) on one MiniLM, 1,000 requests with 64 in flight, 1-4 texts each;
2. the same server, the same requests one at a time;
3. 10 full models (one model per task), the concurrent load again.
Reported: errors, requests and texts per second, p50 / p99 latency, and the server's resident memory.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRESETS = ["adapter", "lora", "prefix", "soft-prompt", "linear-probe"]
WORDS = ("oil prices rose after the report the company said shares fell trade deficit grain exports bank "
         "rates money supply profit loss quarter earnings acquisition merger crude output").split()


def make_tasks(root: Path, full: bool, n: int = 10) -> None:
    import torch

    import tailtune as tt
    for i in range(n):
        path = root / f"task{i}"
        if path.exists():
            continue
        torch.manual_seed(i)
        preset = "cls" if full else PRESETS[i % len(PRESETS)]
        model = tt.build_classifier(tt.config_from_preset(preset, max_length=64), [f"c{j}" for j in range(3 + i % 5)])
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad and p.dim() > 0 and not full:
                    p.add_(torch.randn_like(p) * 0.01)
        tt.save_classifier(model, path)


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fire(port: int, requests: list[tuple[str, list[str]]], concurrency: int) -> dict:
    import httpx
    latencies: list[float] = []
    errors = 0
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
        async def one(task: str, texts: list[str]) -> None:
            nonlocal errors
            async with limit:
                start = time.perf_counter()
                r = await client.post(f"/v1/{task}/predict", json={"texts": texts})
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200
        start = time.perf_counter()
        await asyncio.gather(*(one(t, x) for t, x in requests))
        seconds = time.perf_counter() - start
    latencies.sort()
    texts = sum(len(x) for _, x in requests)
    return {"requests": len(requests), "texts": texts, "errors": errors, "seconds": seconds,
            "requests_per_second": len(requests) / seconds, "texts_per_second": texts / seconds,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * len(latencies)) - 1]}


def gpu_mb(pid: int) -> float | None:
    """GPU memory the server process holds (nvidia-smi), or None without a GPU."""
    try:
        rows = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(r.split(",")[1]) for r in rows if r.split(",")[0].strip() == str(pid)]
    return used[0] if used else None


def run_server(root: Path, requests: list, concurrency: int, max_batch: int, device: str = "cpu") -> dict:
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "tailtune.cli", "serve", str(root), "--port", str(port),
                             "--max-batch", str(max_batch), "--max-wait-ms", "10", "--device", device], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import httpx
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        loaded = rss_mb(proc.pid)
        result = asyncio.run(fire(port, requests, concurrency))
        result.update(rss_after_loading_mb=loaded, rss_after_load_test_mb=rss_mb(proc.pid))
        if device != "cpu":
            result.update(gpu_mb_after_load_test=gpu_mb(proc.pid))
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--device", default="cpu", help="device of the served models (cuda: the GPU table)")
    p.add_argument("--out", default="benchmarks/results/serving/load_test.json")
    a = p.parse_args()
    rng = random.Random(0)
    requests = [(f"task{rng.randrange(10)}", [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
                                             for _ in range(rng.randint(1, 4))]) for _ in range(a.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        modules, full = Path(tmp) / "modules", Path(tmp) / "full"
        make_tasks(modules, full=False)
        make_tasks(full, full=True)
        out = {"setup": {"requests": a.requests, "concurrency": a.concurrency, "max_batch": a.max_batch,
                         "tasks": 10, "texts_per_request": "1-4", "words_per_text": "8-40", "device": a.device}}
        out["modules_concurrent"] = run_server(modules, requests, a.concurrency, a.max_batch, a.device)
        print("10 modules, concurrent:", out["modules_concurrent"], flush=True)
        out["modules_one_at_a_time"] = run_server(modules, requests, 1, a.max_batch, a.device)
        print("10 modules, one at a time:", out["modules_one_at_a_time"], flush=True)
        out["full_models_concurrent"] = run_server(full, requests, a.concurrency, a.max_batch, a.device)
        print("10 full models, concurrent:", out["full_models_concurrent"], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
