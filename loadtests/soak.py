"""Soak: a steady locust load on a real ``pdvault up`` for minutes, with the
memory of the node and of its OpenBao sampled.

    python loadtests/soak.py [--minutes 10] [--users 4] [--rate 10] [--out DIR]
    make soak                  # the same, SOAK_MINUTES=10

Starts ``pdvault up`` on a fresh data dir, runs the locust mix
(loadtests/locustfile.py) headless at ``--users`` x ``--rate`` operations per
second, samples the resident memory (VmRSS) of the node and of OpenBao every
``--every`` seconds, then prints the samples, the growth over the second half
of the run (after warm-up, when the caches have filled) and the error rate.
Exits 1 if any request failed or if the node's memory grew by more than
``--max-growth-mib`` over the second half. A figure, not a test: it is not
part of ``make test``.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) / 1024 if m else float("nan")


def _start_up(data_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vault.cli", "up", "--data-dir", str(data_dir), "--port", "0"],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        m = re.search(r"endpoint\s+(127\.0\.0\.1:\d+)", text)
        if m and "Stop with Ctrl-C." in text:
            return proc, m.group(1)
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("pdvault up did not start:\n" + log.read_text()[-3000:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--rate", type=float, default=10.0, help="operations/s per user")
    ap.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--max-growth-mib", type=float, default=32.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="pdvault-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "pdv"
    up, target = _start_up(data_dir, out / "pdvault-up.log")
    bao_pid = int((data_dir / "openbao" / "bao.pid").read_text())
    samples: list[tuple[float, float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, _rss_mib(up.pid), _rss_mib(bao_pid)))
            stop.wait(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        env = {**os.environ, "PDVAULT_DATA_DIR": str(data_dir)}
        env.pop("PDVAULT_TOKEN", None)
        sampler.start()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(ROOT / "loadtests" / "locustfile.py"),
                "--headless",
                "--users",
                str(args.users),
                "--spawn-rate",
                str(args.users),
                "--run-time",
                f"{int(args.minutes * 60)}s",
                "--host",
                target,
                "--csv",
                str(out / "soak"),
                "--only-summary",
                "--pdv-user-rate",
                str(args.rate),
                "--pdv-subjects",
                "200",
                "--pdv-slo",
                "none",
            ],
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.minutes * 60 + 600,
        )
        stop.set()
        sampler.join()
        (out / "locust.log").write_text(run.stdout + run.stderr)
    finally:
        stop.set()
        up.send_signal(signal.SIGTERM)
        up.wait(60)

    with (out / "soak_stats.csv").open(newline="") as f:
        total = {r["Name"]: r for r in csv.DictReader(f)}["Aggregated"]
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])
    print(f"soak: {args.minutes:g} min, {args.users} users x {args.rate:g} op/s, output in {out}")
    print("   t (s)   node RSS (MiB)   OpenBao RSS (MiB)")
    for t, node, bao in samples:
        print(f"{t:8.0f}   {node:14.1f}   {bao:17.1f}")
    half = [s for s in samples if s[0] >= samples[-1][0] / 2] or samples
    node_growth = half[-1][1] - half[0][1]
    bao_growth = half[-1][2] - half[0][2]
    print(
        f"second half: node {node_growth:+.1f} MiB, OpenBao {bao_growth:+.1f} MiB; "
        f"requests {requests}, failures {failures} "
        f"(error rate {failures / max(requests, 1):.4%}); "
        f"p50 {total['50%']} ms, p99 {total['99%']} ms"
    )
    ok = run.returncode == 0 and failures == 0 and node_growth <= args.max_growth_mib
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
