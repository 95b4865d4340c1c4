"""Random bytes fetched a block at a time (domain/randomness.py) and the ids made of them."""

from __future__ import annotations

import os
import uuid

from mailsvc.domain import randomness
from mailsvc.domain.ids import uuid7
from mailsvc.domain.randomness import random_bytes


def test_no_bytes_are_handed_out_twice_across_blocks() -> None:
    pieces = [random_bytes(16) for _ in range(3 * randomness._BLOCK // 16 + 7)]
    assert all(len(piece) == 16 for piece in pieces)
    assert len(set(pieces)) == len(pieces)
    assert len(random_bytes(randomness._BLOCK + 1)) == randomness._BLOCK + 1  # larger: straight from the OS


def test_a_forked_child_does_not_repeat_the_parents_bytes() -> None:
    random_bytes(16)  # a block is held
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next bytes
        os.write(write, random_bytes(16))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16
    assert child != random_bytes(16)


def test_uuid7_is_a_plain_version_7_uuid_in_time_order() -> None:
    ids = [uuid7() for _ in range(1000)]
    for made in ids[:50]:
        assert type(made) is uuid.UUID
        assert made == uuid.UUID(int=made.int) == uuid.UUID(str(made))
        assert hash(made) == hash(uuid.UUID(str(made)))
        assert (made.version, made.variant) == (7, uuid.RFC_4122)
        assert made.is_safe is uuid.SafeUUID.unknown
    assert len(set(ids)) == len(ids)
    assert [i.int >> 80 for i in ids] == sorted(i.int >> 80 for i in ids)  # the milliseconds never go back
