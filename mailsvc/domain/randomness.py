"""Random bytes from the operating system, fetched a block at a time.

Every accepted delivery needs three pieces of randomness (its UUIDv7's random bits, its
Message-ID, its MIME boundary): three `getrandom` system calls of ~1 µs each were a few per cent
of acceptance. The bytes are the kernel's CSPRNG output all the same, only fetched 4 KiB at once
and handed out in order, never twice: a lock guards the position (threads), and a forked child
drops the block it inherited (it would otherwise hand out the parent's next bytes again).
"""

from __future__ import annotations

import os
import threading

_BLOCK = 4096


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        if count > _BLOCK:
            return os.urandom(count)
        with self._lock:
            if self._at + count > len(self._block):
                self._block, self._at = os.urandom(_BLOCK), 0
            start = self._at
            self._at = start + count
            return self._block[start : start + count]

    def drop(self) -> None:
        self._block, self._at = b"", 0
        self._lock = threading.Lock()  # a lock held by another thread at the fork stays held in the child


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.drop)


def random_bytes(count: int) -> bytes:
    """`count` bytes fresh from the OS's CSPRNG, never handed out before in this process."""
    return _POOL.take(count)
