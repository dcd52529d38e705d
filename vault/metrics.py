"""Prometheus metrics of a node (``prometheus-client``), served on
``--metrics-port`` (off unless given).

Labels carry only names the code chooses — RPC names, status codes, region
ids, OpenBao operations, cache names — never an id, a token or a value, so a
scrape holds no personal data. The metrics are process-wide (one node per
process in production).

Per-request cost is kept small: the gRPC interceptor binds its label children
once per (method, code) and observes one histogram; the caches add one
``inc`` on a pre-bound child.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

from vault._interceptor import WrappingInterceptor

#: Buckets for in-process calls: from 100 µs (warm GetRecord) to 10 s.
_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)

REQUESTS = Counter(
    "pdvault_grpc_requests", "gRPC requests served, by method and status code", ["method", "code"]
)
REQUEST_SECONDS = Histogram(
    "pdvault_grpc_request_seconds",
    "Time to serve a gRPC request, by method",
    ["method"],
    buckets=_BUCKETS,
)
OPENBAO_CALLS = Counter(
    "pdvault_openbao_calls",
    "Calls to OpenBao Transit, by operation and outcome (ok, refused, unavailable)",
    ["op", "outcome"],
)
OPENBAO_SECONDS = Histogram(
    "pdvault_openbao_call_seconds",
    "Time of one OpenBao call, by operation",
    ["op"],
    buckets=_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "pdvault_cache_lookups",
    "Lookups in the in-process caches (data_key, subject, token), by result (hit, miss)",
    ["cache", "result"],
)
ERASURES = Counter(
    "pdvault_erasures",
    "Erasures by event: requested, completed (key destroyed), cancelled",
    ["event"],
)
ERASURES_PENDING = Gauge(
    "pdvault_erasures_pending",
    "Erasures in the ledger whose key is not destroyed yet (as last seen by the erasure worker)",
)
FORWARDED = Counter(
    "pdvault_forwarded_requests",
    "Calls forwarded to another region's node, by entry and home region",
    ["from_region", "to_region"],
)

AUDIT_BATCHES = Counter(
    "pdvault_audit_batches",
    "Audit batches committed, by log (region id or control) and outcome (ok, failed)",
    ["log", "outcome"],
)
AUDIT_ENTRIES = Counter(
    "pdvault_audit_entries",
    "Audit entries made durable, by log (entries per batch = entries / batches)",
    ["log"],
)
LOOKUP_REINDEX = Counter(
    "pdvault_lookup_reindex_subjects",
    "Subjects a blind-index re-index job went through, by region and outcome "
    "(reindexed, gone, unsealed, failed)",
    ["region", "outcome"],
)
KEY_ROTATIONS = Counter(
    "pdvault_key_rotation_subjects",
    "Subjects a key rotation job went through, by region and outcome "
    "(rotated, gone, held, failed): the job's progress",
    ["region", "outcome"],
)
KEY_POOL_DEPTH = Gauge(
    "pdvault_key_pool_depth",
    "Unclaimed subjects in the subject-key pool, by region (as last seen by this node's filler)",
    ["region"],
)


def cache_counters(cache: str) -> tuple[Any, Any]:
    """The (hit, miss) counters of one cache, bound once."""
    return CACHE_LOOKUPS.labels(cache, "hit"), CACHE_LOOKUPS.labels(cache, "miss")


def observe_openbao(op: str, outcome: str, seconds: float) -> None:
    """One OpenBao call: ``outcome`` is ok, refused (an answer the caller
    handles: a wrap that does not open, a key that is gone) or unavailable."""
    OPENBAO_SECONDS.labels(op).observe(seconds)
    OPENBAO_CALLS.labels(op, outcome).inc()


def serve_metrics(port: int, host: str = "127.0.0.1") -> tuple[Any, int]:
    """Starts the /metrics HTTP endpoint; returns (server, bound port)."""
    httpd, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    return httpd, int(httpd.server_address[1])


class MetricsInterceptor(WrappingInterceptor):
    """Counts and times every RPC by method and status code.

    The wrapped handler of each method is built once and reused; a call then
    costs a clock read before and after, one histogram observation and one
    counter increment.
    """

    def __init__(self) -> None:
        super().__init__()
        self._counters: dict[tuple[str, Any], Any] = {}

    def _record(self, method: str, context: Any, seconds: float, failed: bool) -> None:
        code = context.code()
        if code is None:
            name = "UNKNOWN" if failed else "OK"
        elif isinstance(code, grpc.StatusCode):
            name = code.name
        else:  # an int from context.set_code
            name = next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
        counter = self._counters.get((method, name))
        if counter is None:
            counter = self._counters[(method, name)] = REQUESTS.labels(method, name)
        counter.inc()
        self._histogram(method).observe(seconds)

    def _histogram(self, method: str) -> Any:
        h = self._counters.get((method, None))
        if h is None:
            h = self._counters[(method, None)] = REQUEST_SECONDS.labels(method)
        return h

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        record = self._record
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                start = time.perf_counter()
                failed = True
                try:
                    reply = await inner(request, context)
                    failed = False
                    return reply
                finally:
                    record(method, context, time.perf_counter() - start, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                start = time.perf_counter()
                failed = True
                try:
                    async for item in inner_stream(request, context):
                        yield item
                    failed = False
                finally:
                    record(method, context, time.perf_counter() - start, failed)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        # Streams written through context.write (health Watch) and streaming
        # requests (reflection) are not counted.
        return handler
