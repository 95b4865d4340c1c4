"""A Redis error reply is not a missing stream (SPEC §4): the service runs as a Redis ACL user
(`MAIL_REDIS_USERNAME`, §7) that loses XINFO, and neither records a reset nor moves on."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from tests.support.infra import unique_name, wait_until
from tests.support.intake import connect, delivery_keys, stored_offset, wait_for_offset
from tests.support.payloads import numbered_payload
from tests.support.process import ServiceProcess, running_service
from tests.support.stream import command, xadd_all


@contextlib.asynccontextmanager
async def acl_user(redis: Redis, stream_key: str) -> AsyncIterator[str]:
    """A uniquely named user on the test Redis, granted only what the service needs on this stream."""
    name = unique_name("mailsvc_acl")
    grants = ["+ping", "+client|setname", "+xread", "+xinfo|stream"]
    await redis.execute_command("ACL", "SETUSER", name, "reset", "on", "nopass", f"~{stream_key}", *grants)
    try:
        yield name
    finally:
        await redis.execute_command("ACL", "DELUSER", name)


async def refusals(service: ServiceProcess, count: int) -> list[dict[str, object]]:
    async def logged() -> list[dict[str, object]]:
        assert service.process.returncode is None, service.output()
        assert not service.events("stream_reset_detected"), "an error reply was taken for a missing stream"
        found = service.events("consumer_redis_error_reply")
        return found if len(found) >= count else []

    return await wait_until(logged, timeout=20, what=f"{count} consumer_redis_error_reply lines")


async def test_xinfo_refused_by_acl_is_retried_with_backoff_and_never_a_reset(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, database_dsn: str
) -> None:
    async with (
        acl_user(redis_client, stream_key) as user,
        connect(database_dsn) as db,
        running_service({**service_env, "MAIL_REDIS_USERNAME": user}) as service,
    ):
        (before,) = await xadd_all(redis_client, stream_key, [command(numbered_payload(0), "before")])
        await wait_for_offset(db, stream_key, before)

        await redis_client.execute_command("ACL", "SETUSER", user, "-xinfo")
        await refusals(service, 1)  # the XREAD in flight when XINFO was taken away has returned
        (during,) = await xadd_all(redis_client, stream_key, [command(numbered_payload(1), "during")])
        logged = await refusals(service, 4)
        assert logged[0]["error_class"] == "NoPermissionError"
        assert "xinfo" in str(logged[0]["reply"])
        assert [line["retry_in_s"] for line in logged[:3]] == [0.1, 0.2, 0.4]  # backing off
        # nothing was read past the refusal, and a refusal is no reset
        assert await stored_offset(db, stream_key) == before
        assert await db.fetch("SELECT * FROM stream_events") == []
        assert await delivery_keys(db) == ["before"]
        assert not service.events("stream_reset_detected")

        await redis_client.execute_command("ACL", "SETUSER", user, "+xinfo|stream")
        await wait_for_offset(db, stream_key, during)  # continues from where it was
        assert sorted(await delivery_keys(db)) == ["before", "during"]
        assert await db.fetch("SELECT * FROM stream_events") == []
        service.send_signal(signal.SIGTERM)
        assert await service.wait_exit() == 0
