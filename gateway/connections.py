"""Open WebSockets and HTTP subscription streams (SSE, multipart) of this process: ended with
1001 on shutdown (clients reconnect elsewhere) and with 4401 when their session ends: revoked (a
logout on any process ends them at once) or expired (at the expiry instant). A stream has no
close code: it ends the way its protocol says (see gateway/http_streams.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

from broadcaster import Broadcast
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketState

from services.accounts.sessions import SessionStore, revoked_channel
from services.infra.compat import Unsubscribed
from services.infra.pubsub import RESUBSCRIBED

log = logging.getLogger("tradeql.connections")
GOING_AWAY = 1001
SESSION_REVOKED = 4401


class Peer(Protocol):
    """Something a client holds open: a WebSocket, or an HTTP subscription stream."""

    def is_open(self) -> bool: ...

    async def close(self, code: int, reason: str) -> None: ...


class _Socket:
    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    def is_open(self) -> bool:
        return self._websocket.application_state == WebSocketState.CONNECTED

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.close(code=code, reason=reason)


class Connections:
    def __init__(self) -> None:
        self._sockets: dict[int, Peer] = {}
        self._sessions: dict[int, UUID] = {}
        self._expiries: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # expiry closes under way
        self.draining = False
        self.emptied = asyncio.Event()
        self.emptied.set()

    def __len__(self) -> int:
        return len(self._sockets)

    def add(self, websocket: WebSocket) -> None:
        self.add_peer(websocket, _Socket(websocket))

    def add_peer(self, connection: HTTPConnection, peer: Peer) -> None:
        self._sockets[id(connection.scope)] = peer
        self.emptied.clear()

    def bind(self, connection: HTTPConnection, session_id: UUID, expires_at: datetime) -> None:
        """Tie a socket (or stream) to its session: it is closed (4401) when the session is
        revoked, and at the instant it expires."""
        key = id(connection.scope)
        self._sessions[key] = session_id
        previous = self._expiries.pop(key, None)
        if previous is not None:
            previous.cancel()
        delay = max(0.0, (expires_at - datetime.now(UTC)).total_seconds())
        loop = asyncio.get_running_loop()
        self._expiries[key] = loop.call_later(
            delay, lambda: self._track(loop.create_task(self._expire(key)))
        )

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, key: int) -> None:
        if await self._close([key], SESSION_REVOKED, "session expired"):
            log.info("closed a socket whose session expired")

    def remove(self, scope: object) -> None:
        self._sockets.pop(id(scope), None)
        self._sessions.pop(id(scope), None)
        expiry = self._expiries.pop(id(scope), None)
        if expiry is not None:
            expiry.cancel()
        if not self._sockets:
            self.emptied.set()

    async def _close(self, keys: list[int], code: int, reason: str) -> int:
        closed = 0
        for key in keys:
            peer = self._sockets.get(key)
            if peer is None or not peer.is_open():
                continue
            with contextlib.suppress(Exception):  # already gone: nothing to close
                await peer.close(code, reason)
                closed += 1
        return closed

    async def _close_ended(self, sessions: SessionStore) -> None:
        try:
            ended = await sessions.ended_among(sorted(set(self._sessions.values())))
        except Exception:  # PostgreSQL away too: each socket's next operation checks anyway
            log.warning("could not check the sessions of open sockets", exc_info=True)
            return
        for session_id in ended:
            closed = await self.close_session(session_id)
            if closed:
                log.info("closed %d sockets of a session that ended meanwhile", closed)

    async def close_socket(self, connection: HTTPConnection, reason: str) -> None:
        """End one socket whose session is no longer live (4401: clients stop retrying)."""
        await self._close([id(connection.scope)], SESSION_REVOKED, reason)

    async def close_session(self, session_id: UUID) -> int:
        keys = [k for k, s in self._sessions.items() if s == session_id]
        return await self._close(keys, SESSION_REVOKED, "session revoked")

    async def close_all(self) -> int:
        self.draining = True
        return await self._close(list(self._sockets), GOING_AWAY, "server shutting down")

    async def follow_revocations(self, broadcast: Broadcast, sessions: SessionStore) -> None:
        """Close the sockets of each revoked session. A revocation published while this
        process's pub/sub was reconnecting reached nobody here: once it is back, every bound
        socket's session is checked in PostgreSQL instead."""
        async with broadcast.subscribe(revoked_channel()) as revoked:
            while True:
                try:
                    event = await revoked.get()
                except Unsubscribed:
                    return
                if event.message == RESUBSCRIBED:
                    await self._close_ended(sessions)
                    continue
                with contextlib.suppress(ValueError):
                    closed = await self.close_session(UUID(event.message))
                    if closed:
                        log.info("closed %d sockets of a revoked session", closed)


CONNECTIONS = Connections()


async def drain(timeout: float) -> None:
    """Close every socket and stream with 1001, then give them `timeout` to finish closing."""
    closed = await CONNECTIONS.close_all()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(CONNECTIONS.emptied.wait(), timeout)
    log.info("drained %d websockets and streams (%d still open)", closed, len(CONNECTIONS))
