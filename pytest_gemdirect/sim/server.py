"""Run an aiohttp application on its own event loop in a background daemon thread.

``ServerThread`` is shared by the embedded simulators (ComfyUI, LLM). It binds the listening
socket itself, so ``port=0`` gets a free port from the OS and the real port is read back from the
bound socket (no bind-then-release race). ``stop()`` always returns promptly: open WebSockets and
long-pending requests are closed or cancelled after a short grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

AppSource = web.Application | Callable[[], "web.Application | Awaitable[web.Application]"]

#: ``app[WEBSOCKETS]`` — a WeakSet of open ``web.WebSocketResponse``; ServerThread closes them on stop.
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey(
    "gemdirect_websockets", weakref.WeakSet
)


def track_websocket(request: web.Request, ws: web.WebSocketResponse) -> None:
    """Register ``ws`` so that ``ServerThread.stop()`` closes it (optional; stop cancels anyway)."""
    sockets = request.app.get(WEBSOCKETS)
    if sockets is not None:
        sockets.add(ws)


class ServerThread:
    """An aiohttp ``web.Application`` served from a daemon thread with its own event loop.

    ``app`` is an Application or a zero-argument callable returning one (or a coroutine that
    does); a callable is invoked inside the server's event loop.

    >>> with ServerThread(app, port=0) as server:
    ...     requests.get(server.url + "/ping")
    """

    def __init__(
        self,
        app: AppSource,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "gemdirect-server",
        shutdown_timeout: float = 0.25,
    ) -> None:
        self._app_source = app
        self.host = host
        self.requested_port = int(port)
        self.name = name
        self.shutdown_timeout = float(shutdown_timeout)
        self.port: int | None = None
        self.app: web.Application | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._stop_requested: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public API
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._ready.is_set() and not self._done.is_set() and self._error is None

    def start(self, timeout: float = 15.0) -> ServerThread:
        """Start serving; returns once the socket listens (raises the startup error otherwise)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("server already started")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"{self.name}: not listening within {timeout:g} s")
        if self._error is not None:
            self._thread.join(timeout=2.0)
            raise self._error
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Close the listening socket and every connection; returns within about ``timeout`` s.

        Safe to call more than once, from any thread, including from inside the server's own
        event loop (then it only schedules the shutdown and returns at once).
        """
        thread = self._thread
        loop = self.loop
        if thread is None:
            return
        if loop is not None and self._stop_requested is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed in the meantime
                loop.call_soon_threadsafe(self._stop_requested.set)
        if threading.current_thread() is thread:
            return
        thread.join(timeout)

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the server thread has finished (after ``stop()`` or an internal shutdown)."""
        if self._thread is None:
            return True
        return self._done.wait(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = 5.0) -> Any:
        """Run a coroutine on the server's loop from another thread and return its result."""
        if self.loop is None:
            raise RuntimeError("server not started")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    # ------------------------------------------------------------------ thread body
    def _bind(self) -> socket.socket:
        infos = socket.getaddrinfo(
            self.host or None, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        last: OSError | None = None
        for family, socktype, proto, _canon, addr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                if sys.platform != "win32":
                    # On Windows SO_REUSEADDR lets another process steal the port: leave it off there.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                elif hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
                sock.bind(addr)
                sock.listen(128)
                sock.setblocking(False)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(f"cannot bind {self.host}:{self.requested_port}")

    async def _make_app(self) -> web.Application:
        source = self._app_source
        if isinstance(source, web.Application):
            return source
        app = source()
        if inspect.isawaitable(app):
            app = await app
        if not isinstance(app, web.Application):
            raise TypeError(f"{self.name}: app factory returned {type(app).__name__}, not web.Application")
        return app

    async def _startup(self) -> None:
        self._stop_requested = asyncio.Event()
        app = await self._make_app()
        if WEBSOCKETS not in app:
            with contextlib.suppress(RuntimeError):  # frozen app: ws tracking is optional
                app[WEBSOCKETS] = weakref.WeakSet()
        self.app = app
        try:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        except TypeError:  # aiohttp without shutdown_timeout on the runner
            runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        self._sock = self._bind()
        self.port = int(self._sock.getsockname()[1])
        site = web.SockSite(runner, self._sock)
        await site.start()

    async def _shutdown(self) -> None:
        runner = self._runner
        if runner is None:
            return
        if self._sock is not None:
            # Stop accepting first and let accepts already under way finish: closing the listening
            # server while asyncio is still wiring up an accepted socket leaks that socket.
            with contextlib.suppress(Exception):  # the Windows proactor loop has no readers
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            for _ in range(3):
                await asyncio.sleep(0)
        app = self.app
        if app is not None:
            sockets = app.get(WEBSOCKETS)
            if sockets:
                closes = [ws.close(code=1001, message=b"server shutdown") for ws in list(sockets)]
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        asyncio.gather(*closes, return_exceptions=True), self.shutdown_timeout
                    )
        low_level = runner.server  # web.Server; runner.cleanup() forgets it
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner.cleanup(), self.shutdown_timeout * 3 + 1.0)
        # A connection accepted while the site was closing registers after the server's shutdown
        # pass: let those callbacks run, then cut whatever is still open.
        for _ in range(3):
            await asyncio.sleep(0)
        for handler in list(getattr(low_level, "connections", None) or []):
            transport = getattr(handler, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.abort()
        await asyncio.sleep(0)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._startup())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                self._error = exc
                self._ready.set()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(self._shutdown())
                return
            self._ready.set()
            assert self._stop_requested is not None
            loop.run_until_complete(self._stop_requested.wait())
            loop.run_until_complete(self._shutdown())
        finally:
            self._finish_loop(loop)
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.close()
            self._done.set()

    @staticmethod
    def _finish_loop(loop: asyncio.AbstractEventLoop) -> None:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            shutdown_executor = getattr(loop, "shutdown_default_executor", None)
            if shutdown_executor is not None:
                with contextlib.suppress(Exception):
                    if sys.version_info >= (3, 12):
                        loop.run_until_complete(shutdown_executor(timeout=1.0))
                    else:
                        loop.run_until_complete(asyncio.wait_for(shutdown_executor(), 1.0))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
