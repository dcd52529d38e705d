"""Fixtures of the integration tests that more than one test file uses.

The session's OpenBao (``bao``) and node (``stack``) are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    POSTGRES_ADMIN_DSN,
    Bao,
    Stack,
    configured_bao,
    postgres_database,
    start_stack,
)
from tests.integration._access import Env
from vault.devstack import OpenBaoServer


@pytest.fixture(scope="module")
def env(stack: Stack) -> Iterator[Env]:
    """The session node with a raw channel (every RPC, any authorization header)."""
    e = Env.connect(stack)
    yield e
    e.close()


@pytest.fixture
def own_bao(tmp_path: Path) -> Iterator[Bao]:
    """An OpenBao of this test alone, in ``tmp_path`` (where ``pdvault up`` would lay
    it out beside the node's data), so stopping or restoring it disturbs no other test."""
    server = OpenBaoServer(tmp_path, log=False)
    server.start()
    try:
        yield configured_bao(server, tmp_path)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def two_nodes(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """Two nodes of one vault: the same data dir (control database, token keys, cells).

    A fresh data dir rather than the session stack's: other tests rewrite the
    session's SQLite files from other processes and run CLI processes on them.
    """
    data_dir = tmp_path_factory.mktemp("two-nodes")
    first = start_stack(bao, data_dir)
    try:
        second = start_stack(bao, data_dir)
    except BaseException:
        first.stop()
        raise
    yield first, second
    second.stop()
    first.stop()


PG_ADMIN_DSN = POSTGRES_ADMIN_DSN


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL at 127.0.0.1:5432, dropped afterwards."""
    with postgres_database() as url:
        yield url


class TcpProxy:
    """Forwards a local port to ``target``, so a test can take a server away from a
    node (``stop``: no listener, every open connection cut) and bring it back.

    ``delay`` (seconds) holds every chunk before forwarding it (a slow server);
    ``answer_503`` answers each new HTTP connection 503 itself instead of
    forwarding (a failing server); ``cut`` drops the open connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.delay = 0.0
        self.answer_503 = False
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.cut()

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.answer_503:
                threading.Thread(target=self._answer_503, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _answer_503(client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data and (chunk := client.recv(65536)):
                data += chunk
            body = b'{"errors":["unavailable"]}'
            client.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
        client.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    """A way to PostgreSQL that the test can cut (``stop``) and restore (``start``)."""
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    yield proxy
    proxy.stop()


def through(proxy: TcpProxy, pg_url: str) -> str:
    """``pg_url`` by way of ``proxy``, failing fast while the proxy is stopped."""
    return pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/") + "?connect_timeout=2"


_CLI = (sys.executable, "-m", "vault.cli")


class PdvaultUp:
    """``pdvault up`` as a user runs it: a real process on ``data_dir`` (its own
    OpenBao included), its output appended to ``log``."""

    def __init__(self, data_dir: Path, log: Path, *flags: str) -> None:
        self.data_dir, self.log = data_dir, log
        start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*_CLI, "up", "--data-dir", str(data_dir), "--port", "0", *flags],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = log.read_text()[start:]
            m = re.search(r"endpoint\s+((?:grpcs://)?127\.0\.0\.1:\d+)", text)
            if m and "Stop with Ctrl-C." in text:  # the banner is read whole
                self.target = m.group(1)
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError("pdvault up did not start:\n" + log.read_text()[start:])

    @property
    def output(self) -> str:
        return self.log.read_text()

    def token(self, *flags: str) -> str:
        """A token issued with the CLI, as a script would (administrator credential)."""
        out = subprocess.run(
            [*_CLI, "token", "issue", "--data-dir", str(self.data_dir), *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C in a terminal would; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
