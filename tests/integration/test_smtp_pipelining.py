"""SMTP PIPELINING (RFC 2920) in the provider: aiosmtpd for the protocol, a raw server for hostile bytes.

Pipelining is proved on the server side: aiosmtpd's session records every chunk it reads (MAIL,
RCPT and DATA in one chunk), and `RawSmtpServer` answers nothing until the whole group is in, so a
client that waited for each reply would get none.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import astuple
from typing import Any

import pytest

from mailsvc.domain.model import SendResult
from tests.smtp_servers import Hangup, RawReply, RawSmtpServer, ScriptedHandler, SmtpServer, command_reads
from tests.support.smtp_client import SENDER, ProviderFactory, Providers, outgoing, send


def verdict(result: SendResult) -> tuple[Any, ...]:
    """Everything a result says, for comparing two of them."""
    return (*astuple(result)[:5], [astuple(r) for r in result.recipients])


def pipelined(server: SmtpServer, recipients: int) -> bool:
    return ["MAIL", *["RCPT"] * recipients, "DATA"] in command_reads(server.reads)


# ---- against aiosmtpd -----------------------------------------------------------------------


async def test_mixed_refusals_in_one_pipelined_group(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(rcpt_replies={"bob@example.org": "550 5.1.1 no such user"})
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port)
        msg = outgoing("ann@example.org", "bob@example.org", "cy@example.org")
        result = await send(provider, msg)
        assert (result.outcome, result.smtp_code, result.smtp_reply) == ("sent", 250, "2.0.0 OK queued")
        assert [(r.address, r.accepted, r.smtp_code, r.smtp_reply) for r in result.recipients] == [
            ("ann@example.org", True, 250, "OK"),
            ("bob@example.org", False, 550, "5.1.1 no such user"),
            ("cy@example.org", True, 250, "OK"),
        ]
        [received] = handler.received
        assert received.rcpt_tos == ["ann@example.org", "cy@example.org"]
        assert received.content == msg.mime
        assert pipelined(server, 3)
        # the pooled connection is in step: the next transaction is pipelined on it too
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert server.connections == 1
        assert pipelined(server, 1)


async def test_5xx_to_mail_in_the_pipeline_is_transient_and_sends_no_payload(
    provider_for: ProviderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    handler = ScriptedHandler(mail_reply_once="553 5.7.1 sender not allowed")
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port)
        result = await send(provider, outgoing("ann@example.org", "bob@example.org"))
        assert (result.outcome, result.smtp_code, result.error_class) == ("transient_failure", 553, "sender_refused")
        assert result.smtp_reply == "5.7.1 sender not allowed"
        assert result.recipients == ()  # the RCPT replies (503 "need MAIL") say nothing of the recipients
        [record] = [r for r in caplog.records if r.getMessage() == "smtp.sender_refused"]
        assert record.levelname == "ERROR"
        assert pipelined(server, 2)  # DATA went out with MAIL …
        assert not any(b"Subject:" in chunk for chunk in server.reads)  # … the message never did
        assert handler.received == []
        # the connection was replaced, and the next attempt is sane
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert server.connections == 2
        assert len(handler.received) == 1


async def test_every_recipient_refused_in_the_pipeline_is_permanent(provider_for: ProviderFactory) -> None:
    handler = ScriptedHandler(
        rcpt_replies={"ann@example.org": "550 5.1.1 no such user", "bob@example.org": "553 5.1.3 bad address"}
    )
    with SmtpServer(handler) as server:
        provider = provider_for(server.host_port)
        result = await send(provider, outgoing("ann@example.org", "bob@example.org"))
        assert (result.outcome, result.smtp_code, result.error_class) == (
            "permanent_failure",
            550,
            "recipients_refused",
        )
        assert [(r.accepted, r.smtp_code) for r in result.recipients] == [(False, 550), (False, 553)]
        assert pipelined(server, 2)
        assert not any(b"Subject:" in chunk for chunk in server.reads)
        assert handler.received == []
        assert (await send(provider, outgoing("cy@example.org"))).outcome == "sent"
        assert server.connections == 2


async def test_drop_after_the_final_dot_of_a_pipelined_transaction_is_ambiguous(
    provider_for: ProviderFactory,
) -> None:
    handler = ScriptedHandler(drop_after_data=True)
    with SmtpServer(handler) as server:
        result = await send(provider_for(server.host_port), outgoing("ann@example.org"))
        assert (result.outcome, result.error_class, result.ambiguous) == ("transient_failure", "connection_lost", True)
        assert len(handler.received) == 1
        assert pipelined(server, 1)


SCENARIOS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "sent": ({}, ("ann@example.org", "bob@example.org")),
    "mixed_refusals": (
        {"rcpt_replies": {"bob@example.org": "550 5.1.1 no such user"}},
        ("ann@example.org", "bob@example.org"),
    ),
    "mail_5xx": ({"mail_reply": "553 5.7.1 sender not allowed"}, ("ann@example.org",)),
    "mail_4xx": ({"mail_reply": "451 4.3.0 try later"}, ("ann@example.org",)),
    "all_refused": ({"rcpt_replies": {"ann@example.org": "550 5.1.1 no such user"}}, ("ann@example.org",)),
    "all_refused_one_4xx": (
        {"rcpt_replies": {"ann@example.org": "550 5.1.1 no such user", "bob@example.org": "450 4.2.0 busy"}},
        ("ann@example.org", "bob@example.org"),
    ),
    "rcpt_421": ({"rcpt_replies": {"ann@example.org": "421 4.3.2 closing"}}, ("ann@example.org", "bob@example.org")),
    "data_5xx": ({"data_reply": "554 5.6.0 message rejected"}, ("ann@example.org",)),
    "data_4xx": ({"data_reply": "451 4.3.0 try later"}, ("ann@example.org",)),
    "drop_after_dot": ({"drop_after_data": True}, ("ann@example.org",)),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_a_server_without_pipelining_gets_lock_step_and_the_same_results(
    provider_for: ProviderFactory, scenario: str
) -> None:
    script, recipients = SCENARIOS[scenario]
    verdicts = {}
    for advertised in (True, False):
        with SmtpServer(ScriptedHandler(pipelining=advertised, **script)) as server:
            verdicts[advertised] = verdict(await send(provider_for(server.host_port), outgoing(*recipients)))
            reads = command_reads(server.reads)
        if advertised:
            assert any(len(verbs) > 1 for verbs in reads), reads
        else:
            assert all(len(verbs) == 1 for verbs in reads), reads  # each command waited for its reply
    assert verdicts[True] == verdicts[False]


async def test_pipelining_over_starttls(provider_for: ProviderFactory) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    with SmtpServer(tls_context=server_context, require_starttls=True) as server:
        provider = provider_for(server.host_port, tls="starttls", insecure_skip_verify=True)
        for _ in range(2):
            assert (await send(provider, outgoing("ann@example.org", "bob@example.org"))).outcome == "sent"
        assert server.connections == 1
        assert len(server.handler.received) == 2
        assert pipelined(server, 2)  # the tap reads the TLS transport (it is attached after STARTTLS)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_pipelining_on_uvloop(tls: bool) -> None:
    """`mailsvc serve` runs on uvloop, whose transports cache the protocol's callbacks."""
    uvloop = pytest.importorskip("uvloop")
    kwargs: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    if tls:
        trustme = pytest.importorskip("trustme")
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        trustme.CA().issue_cert("127.0.0.1").configure_cert(server_context)
        kwargs = {"tls_context": server_context, "require_starttls": True}
        overrides = {"tls": "starttls", "insecure_skip_verify": True}
    handler = ScriptedHandler(rcpt_replies={"bob@example.org": "550 5.1.1 no such user"})

    async def scenario(server: SmtpServer) -> list[tuple[str, bool]]:
        providers = Providers()
        try:
            provider = providers.make(server.host_port, **overrides)
            results = [await send(provider, outgoing("ann@example.org", "bob@example.org"))]
            results.append(await send(provider, outgoing("ann@example.org")))
            handler.mail_reply_once = "553 5.7.1 sender not allowed"
            results.append(await send(provider, outgoing("ann@example.org")))
            results.append(await send(provider, outgoing("ann@example.org")))
            return [(r.outcome, r.ambiguous) for r in results]
        finally:
            await providers.close()

    with SmtpServer(handler, **kwargs) as server, asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        outcomes = runner.run(scenario(server))
        assert outcomes == [("sent", False), ("sent", False), ("transient_failure", False), ("sent", False)]
        assert server.connections == 2  # the first two on one connection; the refused MAIL dropped it
        assert len(handler.received) == 3
        assert pipelined(server, 2)


# ---- against a byte-level server ------------------------------------------------------------


async def test_mail_rcpt_and_data_arrive_before_any_reply(provider_for: ProviderFactory) -> None:
    async with RawSmtpServer() as raw:
        provider = provider_for(raw.host_port)
        msg = outgoing("ann@example.org", "bob@example.org")
        result = await send(provider, msg)
        assert (result.outcome, result.smtp_code, result.smtp_reply) == ("sent", 250, "2.0.0 OK")
        [group] = raw.groups
        assert group == [
            f"MAIL FROM:<{SENDER}> SIZE={len(raw.messages[0]) - 3}\r\n".encode(),
            b"RCPT TO:<ann@example.org>\r\n",
            b"RCPT TO:<bob@example.org>\r\n",
            b"DATA\r\n",
        ]
        assert raw.messages[0].endswith(b"\r\n.\r\n")
        assert b"\r\n..a line with a leading dot\r\n" in raw.messages[0]  # dot-stuffed on the wire
        assert (await send(provider, outgoing("cy@example.org"))).outcome == "sent"
        assert raw.connections == 1
        assert len(raw.groups) == 2


async def test_replies_split_anywhere_and_multi_line_are_matched_in_order(provider_for: ProviderFactory) -> None:
    group = (
        b"250-2.1.0 sender\r\n250 2.1.0 ok\r\n"  # MAIL
        b"250 2.1.5 ok\r\n"  # RCPT ann
        b"550-5.1.1 no such\r\n550 5.1.1 user\r\n"  # RCPT bob
        b"251 2.1.5 will forward\r\n"  # RCPT cy
        b"354 go\r\n"
    )
    async with RawSmtpServer(
        group_replies=[group], dot_replies=[b"250-2.0.0 queued\r\n250 as 12345\r\n"], drip=True
    ) as raw:
        result = await send(
            provider_for(raw.host_port), outgoing("ann@example.org", "bob@example.org", "cy@example.org")
        )
        assert (result.outcome, result.smtp_code, result.smtp_reply) == ("sent", 250, "2.0.0 queued as 12345")
        assert [(r.address, r.accepted, r.smtp_code, r.smtp_reply) for r in result.recipients] == [
            ("ann@example.org", True, 250, "2.1.5 ok"),
            ("bob@example.org", False, 550, "5.1.1 no such 5.1.1 user"),
            ("cy@example.org", True, 251, "2.1.5 will forward"),
        ]
        assert len(raw.messages) == 1


HOSTILE: dict[str, tuple[list[RawReply], list[RawReply], str, bool]] = {
    # name: (group replies, dot replies, error class, ambiguous) — one recipient each
    "garbage_in_the_group": ([b"250 OK\r\nHELLO THERE\r\n354 go\r\n"], [], "protocol_error", False),
    "extra_reply_in_the_group": ([b"250 OK\r\n250 OK\r\n250 OK\r\n354 go\r\n"], [], "protocol_error", False),
    "code_out_of_range": ([b"250 OK\r\n650 what\r\n354 go\r\n"], [], "protocol_error", False),
    "multi_line_changing_code": ([b"250-OK\r\n251 OK\r\n250 OK\r\n354 go\r\n"], [], "protocol_error", False),
    "line_too_long": ([b"250 " + b"x" * 9000 + b"\r\n250 OK\r\n354 go\r\n"], [], "protocol_error", False),
    "line_without_end": ([b"250 " + b"x" * 20000], [], "protocol_error", False),
    "reply_too_long": ([b"250-x\r\n" * 6000 + b"250 OK\r\n250 OK\r\n354 go\r\n"], [], "protocol_error", False),
    "closed_inside_the_group": ([Hangup(b"250 OK\r\n")], [], "connection_lost", False),
    "closed_inside_a_reply": ([Hangup(b"250 OK\r\n250-OK\r\n")], [], "connection_lost", False),
    "garbage_after_the_354": ([b"250 OK\r\n250 OK\r\n354 go\r\nHELLO\r\n"], [], "protocol_error", False),
    "extra_reply_after_the_dot": ([], [b"250 OK\r\n250 OK\r\n"], "protocol_error", True),
    "garbage_after_the_final_reply": ([], [b"250 OK\r\nHELLO\r\n"], "protocol_error", True),
    "garbage_after_the_dot": ([], [b"HELLO\r\n"], "protocol_error", True),
    "closed_inside_the_dot_reply": ([], [Hangup(b"250 2.0")], "connection_lost", True),
    "closed_after_the_dot": ([], [Hangup()], "connection_lost", True),
}


@pytest.mark.parametrize("case", HOSTILE)
async def test_hostile_bytes_fail_the_attempt_and_replace_the_connection(
    provider_for: ProviderFactory, case: str
) -> None:
    group_replies, dot_replies, error_class, ambiguous = HOSTILE[case]
    async with RawSmtpServer(group_replies=list(group_replies), dot_replies=list(dot_replies)) as raw:
        provider = provider_for(raw.host_port)
        result = await send(provider, outgoing("ann@example.org"))
        assert (result.outcome, result.error_class, result.ambiguous) == ("transient_failure", error_class, ambiguous)
        assert len(raw.messages) == (1 if ambiguous else 0)  # the payload went out only after a clean 354
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert raw.connections == 2


async def test_354_after_every_recipient_was_refused_gets_no_payload(provider_for: ProviderFactory) -> None:
    """RFC 2920 wants a 503/554 to DATA then; a server that says 354 anyway gets no message."""
    async with RawSmtpServer(group_replies=[b"250 OK\r\n550 5.1.1 no such user\r\n354 go\r\n"]) as raw:
        provider = provider_for(raw.host_port)
        result = await send(provider, outgoing("ann@example.org"))
        assert (result.outcome, result.smtp_code, result.error_class) == (
            "permanent_failure",
            550,
            "recipients_refused",
        )
        assert raw.messages == []
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert raw.connections == 2  # the connection waiting for message bytes was dropped
        assert len(raw.messages) == 1


@pytest.mark.parametrize(
    "dot_reply",
    [b"250 2.0.0 OK\r\n250-more to come", Hangup(b"250 2.0.0 OK\r\n")],
    ids=["a_reply_begun_after_it", "the_server_closing_after_it"],
)
async def test_after_a_clean_250_the_message_is_sent_but_an_unsettled_connection_is_not_reused(
    provider_for: ProviderFactory, dot_reply: RawReply
) -> None:
    async with RawSmtpServer(dot_replies=[dot_reply]) as raw:
        provider = provider_for(raw.host_port)
        result = await send(provider, outgoing("ann@example.org"))
        assert (result.outcome, result.smtp_code, result.ambiguous) == ("sent", 250, False)
        assert (await send(provider, outgoing("ann@example.org"))).outcome == "sent"
        assert raw.connections == 2
        assert len(raw.messages) == 2
