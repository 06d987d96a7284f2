"""Limits that keep one client from starving the others, strict Host parsing, and error messages scrubbed of the
server's temporary paths: request headers must be complete within `header_timeout` seconds (per request), and one
peer may hold at most `per_peer` connections still sending headers, so its half-open connections never fill
uvicorn's global `limit_concurrency`; `localhost:80@evil.com` is refused, not read as `localhost`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import tempfile
from collections import OrderedDict, defaultdict
from typing import Any

PER_PEER_PENDING = 32  # connections of one peer still sending their headers
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9](?:[a-z0-9._-]{0,252}))(?::(\d{1,5}))?")


def parse_host(value: str | None) -> str | None:
    """`Host` header -> lower-case host name without port ('[::1]:80' -> '::1'); None when malformed."""
    if value is None:
        return None
    value = value.strip().lower()
    if ":" in value and not value.startswith("["):  # a bare IPv6 address (allow-list entries such as ::1)
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            pass
    m = _HOST.fullmatch(value)
    if m is None or (m.group(2) is not None and not 0 < int(m.group(2)) < 65536):
        return None
    host = m.group(1)
    return host[1:-1] if host.startswith("[") else host.rstrip(".")


_TMP = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/[^\s'\":]*")


def scrub_paths(text: str) -> str:
    """`text` with the server's temporary paths (uploads unpacked to a scratch folder) replaced by a placeholder."""
    return _TMP.sub("<upload>", text)


def header_timeout_protocol(timeout: float, per_peer: int = PER_PEER_PENDING) -> type:
    """uvicorn's h11 protocol, closing connections whose request headers are not complete within `timeout` s and
    capping each peer's connections that are still sending headers at `per_peer` (the oldest goes)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    pending: dict[str, OrderedDict[int, Any]] = defaultdict(OrderedDict)  # peer -> its header-incomplete ones

    class HeaderTimeoutH11(H11Protocol):
        _guard: asyncio.TimerHandle | None = None
        _peer: str | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            self._peer = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else None
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # headers complete: the body has its own idle timeout
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._guard = self.loop.call_later(timeout, self._expire)
            if self._peer is not None:
                mine = pending[self._peer]
                mine[id(self)] = self
                while len(mine) > per_peer:  # this peer's oldest half-open connection makes room
                    _, oldest = mine.popitem(last=False)
                    oldest._disarm()
                    oldest.transport.close()

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
                self._guard = None
            if self._peer is not None:
                mine = pending.get(self._peer)
                if mine is not None:
                    mine.pop(id(self), None)
                    if not mine:
                        pending.pop(self._peer, None)

        def _expire(self) -> None:
            self._guard = None
            self._disarm()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.transport.close()

    return HeaderTimeoutH11


__all__ = ["PER_PEER_PENDING", "header_timeout_protocol", "parse_host", "scrub_paths"]
