"""Which Redis error replies mean "the stream is gone" (SPEC §4): only "no such key"."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ResponseError

from mailsvc.adapters.redis_stream import stream_missing


@pytest.mark.parametrize(
    ("error", "missing"),
    [
        (ResponseError("no such key"), True),
        (ResponseError("ERR no such key"), True),
        (NoPermissionError("this user has no permissions to run the 'xinfo|stream' command"), False),
        (ResponseError("unknown command 'XINFO', with args beginning with: 'STREAM' 'mail:commands'"), False),
        (ResponseError("unknown subcommand 'STREAM'. Try XINFO HELP."), False),
        (
            ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."),
            False,
        ),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (RedisConnectionError("no such key"), False),
    ],
)
def test_only_no_such_key_means_the_stream_is_gone(error: Exception, missing: bool) -> None:
    assert stream_missing(error) is missing
