"""A lean closed-loop asyncio load generator: N callers, each issuing the next
call as soon as the previous one returns, for a fixed time.

Used instead of locust where precision matters: latencies are taken with
``time.perf_counter_ns`` around each call and kept exactly (no bucketing).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    name: str
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
        return xs[k]

    def row(self) -> str:
        errs = sum(self.errors.values())
        mean = statistics.fmean(self.latencies_ms) if self.latencies_ms else float("nan")
        return (
            f"{self.name:<28} {self.rps:>9.0f} req/s   p50 {self.percentile(50):6.2f} ms   "
            f"p99 {self.percentile(99):6.2f} ms   p99.9 {self.percentile(99.9):6.2f} ms   "
            f"mean {mean:6.2f} ms"
            f"   n={self.ok} errors={errs}"
        )


async def run(
    name: str,
    call: Callable[[int], Awaitable[object]],
    *,
    concurrency: int = 16,
    seconds: float = 10.0,
    warmup: float = 1.0,
) -> Result:
    """Runs ``call(worker_index)`` in ``concurrency`` loops; measures after ``warmup``."""
    result = Result(name, concurrency, seconds)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def worker(i: int) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await call(i)
            except Exception as e:
                if t0 >= measure_from:
                    code = getattr(e, "code", None)
                    key = code() if callable(code) else type(e).__name__
                    result.errors[str(key)] = result.errors.get(str(key), 0) + 1
                continue
            if t0 >= measure_from:
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return result


def run_threads(
    name: str,
    call: Callable[[int], object],
    *,
    concurrency: int = 16,
    seconds: float = 10.0,
    warmup: float = 1.0,
) -> Result:
    """Like :func:`run`, for a blocking ``call(worker_index)``: one thread per caller."""
    result = Result(name, concurrency, seconds)
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    lock = threading.Lock()

    def worker(i: int) -> None:
        mine: list[float] = []
        errors: dict[str, int] = {}
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            try:
                call(i)
            except Exception as e:
                if t0 >= measure_from:
                    key = type(e).__name__
                    errors[key] = errors.get(key, 0) + 1
                continue
            if t0 >= measure_from:
                mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            result.latencies_ms.extend(mine)
            for k, n in errors.items():
                result.errors[k] = result.errors.get(k, 0) + n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


def merge(name: str, results: list[Result]) -> Result:
    """One result from callers run in several processes over the same window."""
    merged = Result(
        name, sum(r.concurrency for r in results), max((r.seconds for r in results), default=0)
    )
    for r in results:
        merged.latencies_ms.extend(r.latencies_ms)
        for k, n in r.errors.items():
            merged.errors[k] = merged.errors.get(k, 0) + n
    return merged
