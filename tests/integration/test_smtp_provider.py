"""SmtpProvider against real aiosmtpd servers over real sockets (scripted in tests/smtp_servers.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import timedelta

import pytest

from mailsvc.adapters import smtp_provider
from mailsvc.domain.model import OutgoingMessage
from mailsvc.settings import HostPort, Secret
from tests.smtp_servers import HOST, ScriptedHandler, SmtpServer, free_port
from tests.support.smtp_client import SENDER, ProviderFactory, outgoing, send


async def test_plain_send_delivers_exact_bytes(provider_for: ProviderFactory) -> None:
    with SmtpServer() as server:
        provider = provider_for(server.host_port)
        msg = outgoing("ann@example.org", "bob@example.org")
        result = await send(provider, msg)
        assert result.outcome == "sent"
        assert result.smtp_code == 250
        assert result.smtp_reply == "2.0.0 OK queued"
        assert [(r.address, r.accepted, r.smtp_code) for r in result.recipients] == [
            ("ann@example.org", True, 250),
            ("bob@example.org", True, 250),
        ]
        [received] = server.handler.received
        assert received.mail_from == SENDER
        assert received.rcpt_tos == ["ann@example.org", "bob@example.org"]
        assert received.content == msg.mime  # dot-stuffing undone by the server


@pytest.mark.parametrize(
    ("handler", "code"),
    [
        (ScriptedHandler(mail_reply="421 4.3.2 shutting down"), 421),
        (ScriptedHandler(mail_reply="451 4.3.0 try later"), 451),
        (ScriptedHandler(rcpt_replies={"ann@example.org": "451 4.2.1 greylisted"}), 451),
        (ScriptedHandler(rcpt_replies={"ann@example.org": "421 4.3.2 closing"}), 421),
        (ScriptedHandler(data_reply="452 4.3.1 out of space"), 452),
    ],
)
async def test_4xx_replies_are_transient(provider_for: ProviderFactory, handler: ScriptedHandler, code: int) -> None:
    with SmtpServer(handler) as server:
        result = await send(provider_for(server.host_port), outgoing("ann@example.org"))
    assert result.outcome == "transient_failure"
    assert result.smtp_code == code
    assert not result.ambiguous


async def test_5xx_to_rcpt_is_permanent(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(rcpt_replies={"ann@example.org": "550 5.1.1 no such user"})
    with SmtpServer(handler) as server:
        result = await send(provider_for(server.host_port), outgoing("ann@example.org"))
    assert result.outcome == "permanent_failure"
    assert result.smtp_code == 550
    assert result.error_class == "recipients_refused"
    assert result.smtp_reply == "5.1.1 no such user"
    assert [(r.address, r.accepted, r.smtp_code) for r in result.recipients] == [("ann@example.org", False, 550)]
    assert "DATA" not in handler.commands


async def test_all_refused_with_one_4xx_is_transient(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(
        rcpt_replies={"ann@example.org": "550 5.1.1 no such user", "bob@example.org": "450 4.2.0 busy"}
    )
    with SmtpServer(handler) as server:
        result = await send(provider_for(server.host_port), outgoing("ann@example.org", "bob@example.org"))
    assert result.outcome == "transient_failure"
    assert result.smtp_code == 450
    assert len(result.recipients) == 2


async def test_5xx_to_data_is_permanent(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(data_reply="554 5.6.0 message rejected")
    with SmtpServer(handler) as server:
        result = await send(provider_for(server.host_port), outgoing("ann@example.org"))
    assert result.outcome == "permanent_failure"
    assert result.smtp_code == 554
    assert not result.ambiguous


async def test_5xx_to_mail_from_is_transient(provider_for: ProviderFactory, caplog: pytest.LogCaptureFixture) -> None:
    handler = ScriptedHandler(mail_reply="553 5.7.1 sender not allowed")
    with SmtpServer(handler) as server:
        result = await send(provider_for(server.host_port), outgoing("ann@example.org"))
    assert result.outcome == "transient_failure"
    assert result.smtp_code == 553
    assert result.error_class == "sender_refused"
    [record] = [r for r in caplog.records if r.getMessage() == "smtp.sender_refused"]
    assert record.levelname == "ERROR"
    assert SENDER not in str(record.__dict__)  # masked


async def test_mixed_recipients_are_sent_with_per_recipient_results(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(rcpt_replies={"bob@example.org": "550 5.1.1 no such user " + "x" * 600})
    with SmtpServer(handler) as server:
        msg = outgoing("ann@example.org", "bob@example.org", "cy@example.org")
        result = await send(provider_for(server.host_port), msg)
        assert result.outcome == "sent"
        assert [(r.address, r.accepted, r.smtp_code) for r in result.recipients] == [
            ("ann@example.org", True, 250),
            ("bob@example.org", False, 550),
            ("cy@example.org", True, 250),
        ]
        reply = result.recipients[1].smtp_reply
        assert reply is not None
        assert reply.startswith("5.1.1 no such user")
        assert len(reply) == 512  # SPEC §1: server text cut to 512 characters
        assert handler.received[0].rcpt_tos == ["ann@example.org", "cy@example.org"]


async def test_whole_attempt_is_bounded_by_the_timeout(provider_for: ProviderFactory) -> None:
    # every reply comes within aiosmtplib's per-operation timeout; together they exceed it
    handler = ScriptedHandler(delay=0.4)
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port, timeout=timedelta(seconds=1))
        result = await asyncio.wait_for(provider.send(outgoing("ann@example.org")), 3.0)
    assert result.outcome == "transient_failure"
    assert result.error_class == "timeout"
    assert not result.ambiguous
    assert handler.received == []


async def test_timeout_waiting_for_the_data_reply_is_ambiguous(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(data_delay=3.0)
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port, timeout=timedelta(seconds=1))
        result = await asyncio.wait_for(provider.send(outgoing("ann@example.org")), 3.0)
    assert result.outcome == "transient_failure"
    assert result.error_class == "timeout"
    assert result.ambiguous
    assert len(handler.received) == 1


async def test_connection_dropped_after_the_final_dot_is_ambiguous(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(drop_after_data=True)
    with SmtpServer(handler) as server:
        result = await send(provider_for(server.host_port), outgoing("ann@example.org"))
    assert result.outcome == "transient_failure"
    assert result.ambiguous
    assert result.error_class == "connection_lost"
    assert len(handler.received) == 1  # the server did get the whole message


async def test_server_down_is_transient(provider_for: ProviderFactory) -> None:
    provider = provider_for(HostPort(HOST, free_port()))
    result = await send(provider, outgoing("ann@example.org"))
    assert result.outcome == "transient_failure"
    assert result.error_class == "connect_failed"
    assert not result.ambiguous


async def test_required_starttls_not_offered_sends_nothing(provider_for: ProviderFactory) -> None:
    with SmtpServer() as server:
        provider = provider_for(server.host_port, tls="starttls", username="u", password=Secret("p"))
        result = await send(provider, outgoing("ann@example.org"))
        assert result.outcome == "transient_failure"
        assert result.error_class == "starttls_unavailable"
        assert server.handler.commands == ["EHLO"]  # no AUTH, no MAIL


async def test_auth_in_plaintext_to_loopback(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(accept_logins=True)
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port, username="svc", password=Secret("s3cret"))
        result = await send(provider, outgoing("ann@example.org"))
    assert result.outcome == "sent"
    assert handler.logins == [("svc", "s3cret")]


async def test_auth_refused_by_server_is_transient(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(accept_logins=False)
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port, username="svc", password=Secret("wrong"))
        result = await send(provider, outgoing("ann@example.org"))
    assert result.outcome == "transient_failure"
    assert result.error_class == "auth_failed"
    assert result.smtp_code == 535
    assert "MAIL" not in handler.commands


async def test_credentials_are_withheld_without_tls_from_a_non_loopback_server(
    provider_for: ProviderFactory,
) -> None:
    handler = ScriptedHandler(accept_logins=True)
    with SmtpServer(handler) as server:
        # the same server, reached through an address `HostPort.is_loopback` does not recognise
        addr = HostPort("::ffff:127.0.0.1", server.port)
        assert not addr.is_loopback
        provider = provider_for(addr, tls="none", username="svc", password=Secret("s3cret"))
        result = await send(provider, outgoing("ann@example.org"))
    if result.error_class == "connect_failed":
        pytest.skip("no IPv4-mapped IPv6 on this machine")
    assert result.outcome == "transient_failure"
    assert result.error_class == "auth_requires_tls"
    assert handler.logins == []
    assert "MAIL" not in handler.commands


async def test_a_name_starting_with_127_is_not_a_loopback_server(
    provider_for: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`127.mail.example.com` is a host like any other: `auto` TLS requires STARTTLS there and
    AUTH is never sent to it in cleartext (the name resolves to our plaintext server here)."""
    name = "127.mail.example.com"
    resolve = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **kw: resolve(HOST if host == name else host, *a, **kw))
    handler = ScriptedHandler(accept_logins=True)
    with SmtpServer(handler) as server:
        addr = HostPort(name, server.port)
        auto = provider_for(addr, username="svc", password=Secret("s3cret"))
        result = await send(auto, outgoing("ann@example.org"))
        assert (result.outcome, result.error_class) == ("transient_failure", "starttls_unavailable")
        plaintext = provider_for(addr, tls="none", username="svc", password=Secret("s3cret"))
        result = await send(plaintext, outgoing("ann@example.org"))
        assert (result.outcome, result.error_class) == ("transient_failure", "auth_requires_tls")
        # the name does lead to the server: without credentials, plaintext was asked for and is used
        assert (await send(provider_for(addr, tls="none"), outgoing("ann@example.org"))).outcome == "sent"
    assert handler.logins == []
    assert len(handler.received) == 1


async def test_starttls_with_a_self_signed_certificate(provider_for: ProviderFactory) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "localhost").configure_cert(server_context)
    with SmtpServer(tls_context=server_context, require_starttls=True) as server:
        trusting = provider_for(server.host_port, tls="starttls", insecure_skip_verify=True)
        result = await send(trusting, outgoing("ann@example.org"))
        assert result.outcome == "sent"
        assert len(server.handler.received) == 1

        verifying = provider_for(server.host_port, tls="starttls")
        result = await send(verifying, outgoing("ann@example.org"))
        assert result.outcome == "transient_failure"
        # a certificate that fails verification is ours to fix: it pauses the provider (SPEC §12)
        assert (result.error_class, result.fault) == ("tls_verify_failed", "pause")
        assert len(server.handler.received) == 1


async def test_sequential_sends_reuse_one_connection(provider_for: ProviderFactory) -> None:
    with SmtpServer() as server:
        provider = provider_for(server.host_port)
        for _ in range(3):
            assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert server.connections == 1
        assert len(server.handler.received) == 3


async def test_concurrent_sends_use_at_most_concurrency_connections(provider_for: ProviderFactory) -> None:
    with SmtpServer(ScriptedHandler(delay=0.05)) as server:
        provider = provider_for(server.host_port, concurrency=3)
        results = await asyncio.gather(*(send(provider, outgoing(f"u{i}@example.org")) for i in range(9)))
        assert [r.outcome for r in results] == ["sent"] * 9
        assert server.connections == 3


async def test_idle_connection_is_validated_before_reuse(
    provider_for: ProviderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_provider, "_VALIDATE_IDLE_AFTER", 0.0)
    with SmtpServer() as server:
        provider = provider_for(server.host_port)
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert server.handler.commands.count("NOOP") == 1
        assert server.connections == 1


async def test_failed_attempt_discards_its_connection(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(data_reply="451 4.3.0 try later")
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port)
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "transient_failure"
        handler.data_reply = None
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert server.connections == 2


async def test_restarted_server_is_reconnected_transparently(provider_for: ProviderFactory) -> None:
    first = SmtpServer().start()
    try:
        provider = provider_for(first.host_port)
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
    finally:
        first.stop()
    await asyncio.sleep(0.1)  # let the client see the connection close
    with SmtpServer(port=first.port) as second:
        result = await send(provider, outgoing("ann@example.org"))
        assert result.outcome == "sent"
        assert len(second.handler.received) == 1


async def test_pooled_connection_closed_by_server_at_mail_is_retried_once(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler()
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port)
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        handler.mail_reply_once = "421 4.7.0 too many messages on this connection"
        result = await send(provider, outgoing("ann@example.org"))
        assert result.outcome == "sent"
        assert server.connections == 2
        assert len(handler.received) == 2


async def test_close_quits_idle_connections(provider_for: ProviderFactory) -> None:
    with SmtpServer() as server:
        provider = provider_for(server.host_port)
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        await provider.close()
        await provider.close()  # idempotent


async def test_invalid_recipients_are_reported_and_skipped(provider_for: ProviderFactory) -> None:
    with SmtpServer() as server:
        provider = provider_for(server.host_port)
        msg = outgoing("ann@example.org")
        msg = OutgoingMessage(
            msg.delivery_id, msg.message_id, SENDER, ("ann@example.org", "jõao@example.org"), msg.mime
        )
        result = await send(provider, msg)
        assert result.outcome == "sent"
        assert [(r.address, r.accepted) for r in result.recipients] == [
            ("ann@example.org", True),
            ("jõao@example.org", False),
        ]
        assert server.handler.received[0].rcpt_tos == ["ann@example.org"]

        only_invalid = OutgoingMessage(msg.delivery_id, msg.message_id, SENDER, ("bad address",), msg.mime)
        result = await send(provider, only_invalid)
        assert result.outcome == "permanent_failure"
        assert result.error_class == "invalid_address"
        assert len(server.handler.received) == 1
