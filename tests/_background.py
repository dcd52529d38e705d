"""A :class:`~vault.server.VaultServer` on its own event-loop thread, for tests."""

from __future__ import annotations

import asyncio
import threading

from vault.server import VaultServer


class BackgroundServer:
    """Runs a :class:`VaultServer` on its own event loop thread."""

    def __init__(self, server: VaultServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(30)

    def stop_loop(self) -> None:
        """Stops the event-loop thread (after the server stopped, or failed to start)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(1.0), self._loop).result(30)
        self.stop_loop()
