"""The reference servers of the benchmark ladder (``loadtests/bench.py``).

Each runs in its own process, so it does not share the load generator's GIL:

    python loadtests/_ladder_servers.py echo --reply-file F [--port 0]
    python loadtests/_ladder_servers.py kv --db FILE [--port 0]

- ``echo``: a no-op ``grpc.aio`` server. A generic handler answers every
  unary method with the same pre-serialised bytes (a real GetRecord reply
  captured by the bench), without parsing the request: the ceiling of Python
  gRPC on this machine.
- ``kv``: a plain, unencrypted key-value service over the same store layer as
  pdvault (SQLAlchemy Core, ``vault.store.make_engine``: a SQLite file in WAL
  mode with the same pragmas). ``Get`` takes a ``GetRecordRequest`` and returns
  a ``Record``; ``Put`` takes a ``PutRecordRequest``, inserts a row and returns
  the ``Record``. Same messages as pdvault, no token, no policy, no crypto.
  Handlers run inline on the event loop, like pdvault's warm path.

Both print ``LISTENING <port>`` on stdout once they serve, and stop on SIGTERM.
Server options (message limits, no SO_REUSEPORT) are those of ``vault.server``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    insert,
    select,
)

from vault.store import make_engine
from vault.v1 import vault_pb2 as pb

KV_SERVICE = "pdvault.bench.KeyValue"
KV_GET = f"/{KV_SERVICE}/Get"
KV_PUT = f"/{KV_SERVICE}/Put"
MAX_MESSAGE_BYTES = 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]

_md = MetaData()
kv = Table(
    "kv",
    _md,
    Column("id", String(64), primary_key=True),
    Column("subject_id", String(64), nullable=False),
    Column("category", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("value", Text, nullable=False),  # the fields as JSON, in the clear
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
_KV_COLS = (
    kv.c.id,
    kv.c.subject_id,
    kv.c.category,
    kv.c.version,
    kv.c.value,
    kv.c.created_at,
    kv.c.updated_at,
)
# Built once, like vault.store's hot-path statements.
_GET = select(*_KV_COLS).where(kv.c.id == bindparam("rid"))
_PUT = insert(kv)


def _record(
    rid: str, sid: str, category: str, version: int, value: str, created: int, updated: int
) -> pb.Record:
    r = pb.Record(
        record_id=rid,
        subject_id=sid,
        category=category,
        fields=json.loads(value),
        version=version,
    )
    r.created_at.FromMicroseconds(created)
    r.updated_at.FromMicroseconds(updated)
    return r


class KeyValue:
    def __init__(self, db: Path) -> None:
        self.engine = make_engine(f"sqlite:///{db}")
        _md.create_all(self.engine)

    async def get(self, request: pb.GetRecordRequest, context: Any) -> pb.Record:
        with self.engine.connect() as conn:
            row = conn.execute(_GET, {"rid": request.record_id}).first()
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such record")
        return _record(*row)

    async def put(self, request: pb.PutRecordRequest, context: Any) -> pb.Record:
        now = time.time_ns() // 1000
        rid = "kv_rec_" + secrets.token_hex(12)
        value = json.dumps(dict(request.fields), separators=(",", ":"))
        with self.engine.begin() as conn:
            conn.execute(
                _PUT,
                {
                    "id": rid,
                    "subject_id": request.subject_id,
                    "category": request.category,
                    "version": 1,
                    "value": value,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        return _record(rid, request.subject_id, request.category, 1, value, now, now)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            KV_SERVICE,
            {
                "Get": grpc.unary_unary_rpc_method_handler(
                    self.get,
                    request_deserializer=pb.GetRecordRequest.FromString,
                    response_serializer=pb.Record.SerializeToString,
                ),
                "Put": grpc.unary_unary_rpc_method_handler(
                    self.put,
                    request_deserializer=pb.PutRecordRequest.FromString,
                    response_serializer=pb.Record.SerializeToString,
                ),
            },
        )


class Echo(grpc.GenericRpcHandler):
    """Answers any unary method with ``reply`` (raw bytes; the request is not parsed)."""

    def __init__(self, reply: bytes) -> None:
        self._reply = reply

        async def answer(_request: bytes, _context: Any) -> bytes:
            return self._reply

        # No (de)serialisers: request and reply stay bytes.
        self._handler = grpc.unary_unary_rpc_method_handler(answer)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self._handler


async def serve(handler: grpc.GenericRpcHandler, host: str, port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"cannot listen on {host}:{port}")
    await server.start()
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    echo = sub.add_parser("echo", help="no-op server answering pre-serialised bytes")
    echo.add_argument("--reply-file", type=Path, required=True)
    kvp = sub.add_parser("kv", help="plain key-value service over SQLAlchemy/SQLite")
    kvp.add_argument("--db", type=Path, required=True)
    for p in (echo, kvp):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if args.kind == "echo":
        handler: grpc.GenericRpcHandler = Echo(args.reply_file.read_bytes())
    else:
        handler = KeyValue(args.db).handler()
    asyncio.run(serve(handler, args.host, args.port))


if __name__ == "__main__":
    main()
