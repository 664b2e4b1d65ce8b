"""Serving the API: uvicorn with a graceful drain, alone or as N processes sharing a port.

On SIGTERM the server stops accepting, closes every WebSocket with 1001 (going away: clients
reconnect to another process), lets in-flight requests finish within the grace period, then
closes its pools and exits 0. N workers are N ordinary API processes bound with SO_REUSEPORT
and supervised like `tradeql up` does, so each one drains the same way.
"""

from __future__ import annotations

import signal
import socket

import uvicorn

from gateway.connections import drain


class GracefulServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first
        await drain(min(5.0, float(self.config.timeout_graceful_shutdown or 5)))
        await super().shutdown(sockets)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(host: str, port: int, *, grace_seconds: float, reuse_port: bool = False) -> None:
    config = uvicorn.Config(
        "gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(grace_seconds),
        ws_ping_interval=20,
        # The client address is TRADEQL_TRUSTED_PROXIES' business (gateway/guards.py), not
        # uvicorn's, which would believe X-Forwarded-For from 127.0.0.1 by default.
        proxy_headers=False,
    )
    server = GracefulServer(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with the default
    # handler that kills the process (exit -15) after an orderly drain. A no-op handler lets
    # the drained process exit 0, as an orchestrator expects.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    server.run(sockets=[reuse_port_socket(host, port)] if reuse_port else None)
