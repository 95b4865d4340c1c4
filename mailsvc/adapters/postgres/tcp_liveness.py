"""How long a silent peer may stay silent: TCP keepalive and user timeout for PostgreSQL sessions.

Without them a session outlives a vanished client (power off, partition) for as long as the
kernel's defaults take — two hours of keepalive idle plus minutes of probes — and with it every
lock the session holds: the consumer's advisory lock, or the row locks of a transaction that was
in flight. Both ends get the same bounds:

- the server through the session GUCs (`server_settings`, PostgreSQL ≥ 12), so PostgreSQL ends
  a vanished client's session, and releases its locks, `SILENCE_LIMIT_S` after it last heard
  from it (Linux: `tcp_user_timeout` decides once a keepalive probe or a retransmission is
  outstanding; elsewhere idle + interval * count gives the same 15 s);
- the client through socket options, so a process notices a vanished server instead of waiting
  on a dead socket.

On a Unix-domain socket none of this applies (PostgreSQL ignores the GUCs): there is no network
to vanish.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

log = logging.getLogger("mailsvc.postgres")

KEEPALIVE_IDLE_S = 5  # first keepalive probe after this much silence
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 5
# the longest a peer may go unheard before its connection is dropped (= idle + interval * count)
SILENCE_LIMIT_S = 15

SERVER_SETTINGS = {
    "tcp_keepalives_idle": str(KEEPALIVE_IDLE_S),
    "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL_S),
    "tcp_keepalives_count": str(KEEPALIVE_COUNT),
    "tcp_user_timeout": str(SILENCE_LIMIT_S * 1000),  # milliseconds
}

_SOCKET_OPTIONS = [
    (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
    (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
    (socket.IPPROTO_TCP, "TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
    (socket.IPPROTO_TCP, "TCP_KEEPCNT", KEEPALIVE_COUNT),
    (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", SILENCE_LIMIT_S * 1000),
]


def bound_client_socket(connection: Any) -> bool:
    """Put the keepalive / user-timeout options on an asyncpg connection's socket; False when
    there is no TCP socket to configure (a Unix socket, or asyncpg changed its internals).

    asyncpg has no public way to set socket options (MagicStack/asyncpg#606): its transport is
    the only handle on the socket.
    """
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    for level, name, value in _SOCKET_OPTIONS:
        option = getattr(socket, name, None)
        if option is None:  # not this platform (TCP_USER_TIMEOUT is Linux only)
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)
    return True
