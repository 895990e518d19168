"""Load on ``fewseg serve``: concurrent adapt and segment requests from client threads on 127.0.0.1.

Each run starts a fresh server (``python -m fewseg serve --port 0``, a subprocess, so its memory is its own) and
``--clients`` threads that send, until ``--requests`` requests were sent or ``--duration`` seconds have passed:

    adapt     POST /api/adapt: ``--shots`` support photos with masks + ``--queries`` photos to segment (adapt and
              predict; the server keeps the model)
    segment   POST /api/segment/<model>: ``--queries`` photos with the model the client adapted last (predict only)

A client adapts first, then adapts with probability ``--adapt-share`` and segments otherwise (a seeded draw per
client). Photos are ``--size`` px squares, a bright object on noise, encoded once (JPEG photos, PNG masks).
Reported per run: requests per second (completed requests over the wall time of the load), p50 / p99 latency per
route (nearest rank), the server's peak RSS (VmHWM), its RSS growth from after the first 100 requests to after the
last (a leak check: what the server keeps, 16 adaptations and results, fills up within the first requests), and
errors (any answer but 200, or no answer; must be 0). Then the median over ``--runs``.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py                       # 1,000 requests, 4 clients, 3 runs
    python benchmarks/serve_load.py --checkpoint runs/demo --clients 8 --duration 60 --requests 100000
    python benchmarks/serve_load.py --requests 20 --runs 1                  # a smoke run

Default model: the ``synthetic_maml`` recipe that ``fewseg demo`` trains (unet depth 3, width 8, 48x48, 10
test-time steps) with its initial weights (latency depends on the architecture and sizes, not on the weights).
Linux only (the server's memory is read from /proc).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import date
from pathlib import Path

MAX_CLIENTS = 16   # the server keeps 16 adapted models: more clients would see theirs evicted


def default_checkpoint(folder: Path) -> Path:
    """The demo recipe's model with its initial weights, saved as a meta checkpoint (no training)."""
    from fewseg.config import load_config
    from fewseg.engine.trainer import Trainer
    cfg = load_config("synthetic_maml", [f"output={folder}", "train.iterations=0", "train.val_every=1000"])
    return Trainer(cfg, progress=False).save("last")


def encoded(array, fmt: str) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def photo(rng, side: int):
    import numpy as np
    img = rng.integers(0, 90, (side, side, 3), dtype=np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: 3 * side // 4, side // 3: 2 * side // 3] = 255
    img[mask > 0] = (230, 200, 40)
    return img, mask


def multipart(fields: list[tuple[str, object]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart form: values are text or (file name, bytes)."""
    boundary = "fewseg-" + uuid.uuid4().hex
    parts = []
    for name, value in fields:
        if isinstance(value, tuple):
            filename, data = value
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        else:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def payloads(shots: int, queries: int, size: int) -> dict:
    import numpy as np
    rng = np.random.default_rng(0)
    support = [photo(rng, size) for _ in range(shots)]
    query = [("query", (f"q{j}.jpg", encoded(photo(rng, size)[0], "JPEG"))) for j in range(queries)]
    fields = [f for i, (img, mask) in enumerate(support)
              for f in (("support_image", (f"s{i}.jpg", encoded(img, "JPEG"))), ("support_mask", (f"s{i}.png",
                                                                                               encoded(mask, "PNG"))))]
    return {"adapt": multipart(fields + query), "segment": multipart(query)}


def memory_kb(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def start_server(checkpoint: str, threads: int, tile: int | None, log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "fewseg", "serve", "--checkpoint", checkpoint, "--port", "0"]
    if tile:
        cmd += ["--tile", str(tile)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)
    line = proc.stdout.readline()   # "fewseg serve: http://127.0.0.1:PORT/ (Ctrl-C stops)"
    match = re.search(r"http://[^/]+/", line)
    if not match:
        proc.kill()
        sys.exit(f"fewseg serve did not start: {line.strip()}\n{log.read_text()[-2000:]}")
    return proc, match.group(0)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in (0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))]


def one_run(args, bodies: dict, run: int) -> dict:
    import json
    log = Path(tempfile.mkdtemp()) / "server.log"
    proc, url = start_server(args.checkpoint, args.threads, args.tile, log)
    lock = threading.Lock()
    state = {"issued": 0, "done": 0, "rss_early": None, "early_at": None}
    records, errors = [], []
    early = min(100, max(1, args.requests // 2))  # the leak check's first mark (100 when there are 200 or more)
    t_end = time.perf_counter() + args.duration if args.duration else None

    def send(route: str, model: str | None) -> tuple[bool, dict | str]:
        body, ctype = bodies[route]
        target = url + ("api/adapt" if route == "adapt" else f"api/segment/{model}")
        request = urllib.request.Request(target, data=body, headers={"Content-Type": ctype}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=600) as r:
                return True, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return False, f"{route}: HTTP {exc.code} {exc.read()[:200].decode(errors='replace')}"
        except OSError as exc:
            return False, f"{route}: {exc}"

    def client(index: int) -> None:
        rng, model = random.Random(1000 * run + index), None
        while True:
            with lock:
                if state["issued"] >= args.requests or (t_end and time.perf_counter() >= t_end):
                    return
                state["issued"] += 1
            route = "adapt" if model is None or rng.random() < args.adapt_share else "segment"
            t0 = time.perf_counter()
            ok, answer = send(route, model)
            seconds = time.perf_counter() - t0
            if ok and route == "adapt":
                model = answer["model_id"]
            with lock:
                records.append((route, seconds))
                if not ok:
                    errors.append(answer)
                state["done"] += 1
                if state["done"] == early:
                    state["rss_early"], state["early_at"] = memory_kb(proc.pid)["VmRSS"], early

    try:
        t0 = time.perf_counter()
        workers = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        memory = memory_kb(proc.pid)
    finally:
        stop_server(proc)
    done = len(records)
    by_route = {r: [s for route, s in records if route == r] for r in ("adapt", "segment")}
    return {"requests": done, "seconds": wall, "rps": done / wall if wall else float("nan"),
            **{f"{r}_{k}": v for r, xs in by_route.items()
               for k, v in (("n", len(xs)), ("p50", 1000 * percentile(xs, 50)), ("p99", 1000 * percentile(xs, 99)))},
            "peak_mb": memory["VmHWM"] / 1024,
            "growth_mb": (memory["VmRSS"] - state["rss_early"]) / 1024 if state["rss_early"] else float("nan"),
            "early_at": state["early_at"], "errors": len(errors), "error_lines": errors[:5]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a run or checkpoint directory, or a ready learner's name "
                   "(imagenet-lite0); default: the demo recipe's model with its initial weights")
    p.add_argument("--clients", type=int, default=4, help=f"client threads, 1-{MAX_CLIENTS}")
    p.add_argument("--requests", type=int, default=1000, help="requests per run (the run also ends at --duration)")
    p.add_argument("--duration", type=float, default=None, help="seconds per run at most (default: no limit)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--adapt-share", type=float, default=0.25, help="of requests that adapt (the rest segment)")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=1, help="photos to segment per request")
    p.add_argument("--size", type=int, default=256, help="side of the support and query photos (px)")
    p.add_argument("--threads", type=int, default=1, help="the server's OMP_NUM_THREADS")
    p.add_argument("--tile", type=int, default=None, help="fewseg serve --tile PX")
    args = p.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS:
        p.error(f"--clients must be 1-{MAX_CLIENTS} (the server keeps {MAX_CLIENTS} adapted models)")
    if args.requests < 1 or args.runs < 1 or not 0.0 <= args.adapt_share <= 1.0:
        p.error("--requests and --runs must be >= 1 and --adapt-share in [0, 1]")
    command = " ".join(["python", "benchmarks/serve_load.py", *sys.argv[1:]])
    if args.checkpoint is None:
        args.checkpoint = str(default_checkpoint(Path(tempfile.mkdtemp()) / "default"))
        source = "the synthetic_maml recipe's model, initial weights"
    else:
        source = args.checkpoint
    bodies = payloads(args.shots, args.queries, args.size)
    rows = [one_run(args, bodies, run) for run in range(args.runs)]

    print(f"{date.today()}, {platform.machine()}, {os.cpu_count()} CPUs, server OMP_NUM_THREADS={args.threads}, "
          f"{source}: {args.clients} clients, {args.shots} shots + {args.queries} photo(s) of {args.size}x{args.size} "
          f"per adapt, {args.queries} per segment, adapt share {args.adapt_share}"
          + (f", tile {args.tile}" if args.tile else ""))
    print(f"command: {command}")
    head = ("| run | requests | seconds | req/s | adapt n | adapt p50 ms | adapt p99 ms | segment n | segment p50 ms "
            "| segment p99 ms | peak RSS MB | RSS growth MB | errors |")
    print("\n" + head + "\n" + "|---" * (head.count("|") - 1) + "|")
    keys = ("requests", "seconds", "rps", "adapt_n", "adapt_p50", "adapt_p99", "segment_n", "segment_p50",
            "segment_p99", "peak_mb", "growth_mb", "errors")
    formats = ("{:.0f}", "{:.1f}", "{:.1f}", "{:.0f}", "{:.0f}", "{:.0f}", "{:.0f}", "{:.0f}", "{:.0f}", "{:.0f}",
               "{:+.1f}", "{:.0f}")
    for i, r in enumerate(rows):
        print(f"| {i + 1} | " + " | ".join(f.format(r[k]) for k, f in zip(keys, formats)) + " |")
    if len(rows) > 1:
        median = {k: statistics.median(r[k] for r in rows) for k in keys}
        median["errors"] = sum(r["errors"] for r in rows)
        median["peak_mb"] = max(r["peak_mb"] for r in rows)
        print("| median | " + " | ".join(f.format(median[k]) for k, f in zip(keys, formats)) + " |")
        print("(median over runs; peak RSS: the largest; errors: the total)")
    early = rows[0]["early_at"]
    print(f"RSS growth: the server's RSS after the last request minus after request {early}.")
    lines = [e for r in rows for e in r["error_lines"]]
    if lines:
        print("errors (first ones):\n  " + "\n  ".join(lines))
        sys.exit(1)


if __name__ == "__main__":
    main()
