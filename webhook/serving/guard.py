"""Time limits on slow clients: the TLS handshake, the request headers, the request body.

uvicorn closes a connection that stays idle *between* requests (``timeout_keep_alive``), but not
one that never finishes its handshake (asyncio waits 60 s), never sends its headers, or sends its
body a byte at a time: a few thousand of those held every genuine review at 503 (uvicorn counts
open connections against ``limit_concurrency``) for as long as the client liked. So:

- TLS is set up here, per connection, with asyncio's own ``SSLProtocol`` and a handshake time limit
  (what ``loop.create_server(ssl=...)`` does, with its ``ssl_handshake_timeout`` that uvicorn does
  not expose); the context is the caller's object, so certificate reloads reach new handshakes;
- ``GuardedHttpToolsProtocol`` (uvicorn's httptools protocol) closes a connection whose request
  headers are not complete ``header_timeout`` seconds after it opened (or after its previous
  response, on a kept-alive connection), or whose body is not complete ``body_timeout`` seconds
  after its headers (the application sees a disconnect), and answers 400 and closes when the
  request line and headers run past ``max_header_bytes``;
- a new connection counts against ``limit_concurrency`` only once its first request's headers are
  complete: connections that have sent nothing yet cannot crowd out genuine reviews (once counted,
  a kept-alive connection stays counted, so a graceful shutdown still closes it).

``on_timeout(stage)`` is called for each connection closed (``headers``, ``body``, ``header-size``;
a handshake that times out is closed by asyncio and not reported).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio.sslproto import SSLProtocol
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger("dra_bridge.guard")
Stage = Literal["headers", "body", "header-size"]


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 5.0
    header_timeout: float = 5.0
    body_timeout: float = 5.0
    max_header_bytes: int = 64 * 1024  # the apiserver's request line and headers take well under 1 KiB


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with time limits on reading a request's headers and body."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: Limits,
        on_timeout: Callable[[Stage], None] | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._on_timeout = on_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._counted = False  # in server_state.connections (limit_concurrency, graceful shutdown)
        self._in_headers = True  # reading a request line and headers (httptools does not bound them)
        self._header_bytes = 0

    def _arm(self, seconds: float, stage: Stage) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, stage)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, stage: Stage) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        log.debug("closing %s: request %s not complete in time", self.client, stage)
        if self._on_timeout is not None:
            self._on_timeout(stage)
        self.transport.close()  # the application, if it is reading the body, sees a disconnect

    def _count(self) -> None:
        if not self._counted:
            self._counted = True
            self.connections.add(self)

    # -- uvicorn's callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.connections.discard(self)  # counted once it has sent its request headers
        self._arm(self._limits.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._counted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_headers or self.transport is None or self.transport.is_closing():
            return
        self._header_bytes += len(data)
        if self._header_bytes > self._limits.max_header_bytes:
            if self._on_timeout is not None:
                self._on_timeout("header-size")
            self._disarm()
            self.send_400_response(f"request headers over {self._limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        self._in_headers, self._header_bytes = True, 0
        super().on_message_begin()
        if self._deadline is None:  # a new request on a kept-alive connection
            self._arm(self._limits.header_timeout, "headers")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._count()  # before uvicorn compares the count with limit_concurrency
        self._arm(self._limits.body_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_protocol(
    context: ssl.SSLContext | None,
    *,
    limits: Limits,
    on_timeout: Callable[[Stage], None] | None = None,
) -> Callable[..., asyncio.BaseProtocol]:
    """A protocol factory for ``uvicorn.Config(http=...)``: TLS with a handshake limit, then the guarded HTTP protocol.

    With it, uvicorn must be given no TLS settings of its own (the factory does the TLS).
    """

    def factory(
        config: Config, server_state: ServerState, app_state: dict[str, Any], _loop: Any = None
    ) -> asyncio.BaseProtocol:
        http = GuardedHttpToolsProtocol(config, server_state, app_state, _loop, limits=limits, on_timeout=on_timeout)
        if context is None:
            return http
        return SSLProtocol(
            asyncio.get_running_loop(),
            http,
            context,
            None,  # type: ignore[arg-type]  # no one awaits the handshake: the protocol hears of it
            server_side=True,
            ssl_handshake_timeout=limits.handshake_timeout,  # type: ignore[arg-type]  # seconds, a float
        )

    return factory
