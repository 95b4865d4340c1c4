"""The SMTP provider (`MAIL_SMTP_MODE=smtp`): pooled aiosmtplib connections, one verdict per attempt.

- `MAIL_SMTP_TIMEOUT` bounds the whole attempt (pool wait, connect, EHLO, STARTTLS, AUTH, MAIL,
  RCPT, DATA) with one `asyncio.timeout`; aiosmtplib's own timeout is per socket operation only.
- TLS is never silently downgraded: `starttls` (and `auto` on a non-loopback, non-465 server)
  refuses a server that does not offer STARTTLS, before anything of the message is sent.
- Credentials go out only over TLS or to a loopback server.
- The transaction itself is `smtp_transaction.transact`: pipelined (RFC 2920: MAIL, every RCPT and
  DATA in one write, the replies read by our own `smtp_pipeline.ReplyTap`) when the server
  advertises PIPELINING, lock-step otherwise. Either way it knows when the final "." has been
  written: a connection lost or a timeout after that point is reported as `ambiguous`.
- A connection goes back to the pool only after a 250 with every reply it owed read; anything
  else (a refusal, a reply out of step, any exception) closes it.
- Classification (SPEC §1): 4xx, connection and TLS failures, timeouts → transient; 5xx to RCPT
  or DATA → permanent; 5xx to AUTH or MAIL FROM → transient and logged as an error (it is our
  configuration, not the message); some recipients refused → sent, per-recipient results.
- Provider faults (SPEC §12) are marked on the verdict: AUTH refused, 5xx to MAIL FROM, 530, a
  certificate that fails verification, credentials we cannot use → `fault="pause"`;
  any failure before the server let us in (connect, greeting, implicit TLS) → `fault="connect"`.
- Server text is hostile: every reply that reaches a `SendResult` passes `server_text` first
  (SPEC §1), so no byte a server sends can make a result unwritable.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass, replace

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPStatus,
)

from mailsvc.adapters.smtp_pipeline import ReplyTap
from mailsvc.adapters.smtp_transaction import Attempt, Envelope, transact, wire_payload
from mailsvc.domain.model import OutgoingMessage, ProviderFault, ProviderName, RecipientResult, SendResult
from mailsvc.domain.server_text import server_text
from mailsvc.logs import mask_address, mask_addresses
from mailsvc.settings import SmtpSettings, SmtpTls

__all__ = ["SmtpProvider"]

_log = logging.getLogger(__name__)

_VALIDATE_IDLE_AFTER = 5.0  # seconds idle after which a pooled connection is NOOP-checked
_QUIT_TIMEOUT = 2.0
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _transient(
    error_class: str, code: int | None = None, reply: str | None = None, fault: ProviderFault | None = None
) -> SendResult:
    return SendResult(
        "transient_failure", smtp_code=code, smtp_reply=server_text(reply), error_class=error_class, fault=fault
    )


class _Failed(Exception):
    """A verdict reached before the exchange could go on (carried out of the pool machinery)."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.error_class)
        self.result = result


@dataclass(eq=False)
class _Connection:
    client: SMTP
    last_used: float
    tap: ReplyTap | None = None  # set when the server advertises PIPELINING
    reused: bool = False


class SmtpProvider:
    """Sends pre-rendered messages over a small pool of SMTP connections (size `concurrency`)."""

    name: ProviderName = "smtp"

    def __init__(self, settings: SmtpSettings, concurrency: int, *, local_hostname: str | None = None) -> None:
        if settings.addr is None:
            raise ValueError("SmtpProvider needs MAIL_SMTP_ADDR")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._settings = settings
        self._addr = settings.addr
        self._timeout = settings.timeout.total_seconds()
        self._tls_mode = self._effective_tls(settings.tls)
        self._tls_context = self._build_tls_context() if self._tls_mode != "none" else None
        self._ehlo_name = local_hostname
        self._slots = asyncio.Semaphore(concurrency)
        self._idle: list[_Connection] = []
        self._closed = False

    def _effective_tls(self, tls: SmtpTls) -> SmtpTls:
        if tls != "auto":
            return tls
        if self._addr.port == 465:
            return "implicit"
        return "none" if self._addr.is_loopback else "starttls"

    def _build_tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self._settings.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    # ---- the attempt ------------------------------------------------------------------------

    async def send(self, message: OutgoingMessage) -> SendResult:
        """One attempt for `message`, bounded by `MAIL_SMTP_TIMEOUT`. Returns the verdict; never
        raises for SMTP, network or TLS failures (only cancellation propagates)."""
        state = Attempt(delivery_id=str(message.delivery_id))
        # Addresses were normalised once, at acceptance (validation): they arrive in their wire form
        # (ASCII, IDN domains in punycode). This only makes sure no stored byte can become a command.
        sender = message.envelope_from
        if not _wire_safe(sender):
            _log.error("smtp.invalid_sender", extra={"delivery_id": state.delivery_id})
            return _transient("invalid_sender")
        recipients: list[tuple[str, str]] = []
        invalid: list[RecipientResult] = []
        for recipient in message.recipients:
            if _wire_safe(recipient):
                recipients.append((recipient, recipient))
            else:
                invalid.append(RecipientResult(recipient, False, None, "invalid address"))
        if not recipients:
            return SendResult("permanent_failure", error_class="invalid_address", recipients=tuple(invalid))
        try:
            async with asyncio.timeout(self._timeout):
                result = await self._attempt(state, Envelope(sender, recipients, wire_payload(message.mime)))
        except Exception as exc:
            result = self._classify(exc, state)
        if invalid:
            result = replace(result, recipients=(*result.recipients, *invalid))
        if result.outcome != "sent":
            _log.debug(
                "smtp.attempt_failed",
                extra={
                    "delivery_id": state.delivery_id,
                    "phase": state.phase,
                    "outcome": result.outcome,
                    "smtp_code": result.smtp_code,
                    "error_class": result.error_class,
                    "ambiguous": result.ambiguous,
                    "smtp_reply": mask_addresses(result.smtp_reply),  # it may quote the recipient
                },
            )
        return result

    async def _attempt(self, state: Attempt, envelope: Envelope) -> SendResult:
        async with self._slots:
            conn = await self._checkout(state)
            while True:
                try:
                    result = await transact(conn.client, conn.tap, state, envelope)
                except BaseException as exc:
                    conn.client.close()
                    if conn.reused and state.phase == "mail" and _stale(exc):
                        # the server dropped a pooled connection before taking anything: a fresh
                        # connection is as safe as the first try
                        conn = await self._connect(state)
                        continue
                    raise
                if result.outcome == "sent":
                    self._release(conn)
                else:
                    # Dropped rather than reset with RSET, pipelined or not: the pool's invariant
                    # is that an idle connection's last transaction ended in a 250 with every reply
                    # it owed read. After a refusal the server is off its normal path — one that
                    # answered the pipelined DATA with 354 anyway is waiting for message bytes and
                    # would take an RSET as content, one that counts errors per session (Postfix's
                    # smtpd_soft/hard_error_limit) would tarpit or cut off the next deliveries on
                    # it. A reconnect is the price, paid on the rare path only.
                    conn.client.close()
                return result

    # ---- the pool ---------------------------------------------------------------------------

    async def _checkout(self, state: Attempt) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.client.is_connected:
                conn.client.close()
                continue
            if time.monotonic() - conn.last_used > _VALIDATE_IDLE_AFTER:
                state.phase = "validate"
                try:
                    await conn.client.noop()
                except (SMTPException, OSError):
                    conn.client.close()
                    continue
                except BaseException:
                    conn.client.close()
                    raise
            conn.reused = True
            return conn
        return await self._connect(state)

    def _release(self, conn: _Connection) -> None:
        if self._closed or not conn.client.is_connected:
            conn.client.close()
            return
        conn.last_used = time.monotonic()
        self._idle.append(conn)

    async def _connect(self, state: Attempt) -> _Connection:
        state.phase = "connect"
        client = SMTP(
            hostname=self._addr.host or "localhost",
            port=self._addr.port,
            local_hostname=await self._local_hostname(),
            timeout=self._timeout,
            use_tls=self._tls_mode == "implicit",
            start_tls=False,
            tls_context=self._tls_context,
        )
        try:
            await client.connect()
            state.phase = "ehlo"
            await _hello(client)
            if self._tls_mode == "starttls":
                if not client.supports_extension("starttls"):
                    raise _Failed(_transient("starttls_unavailable"))
                state.phase = "starttls"
                await client.starttls()
                state.phase = "ehlo"
                await _hello(client)
            if self._settings.username:
                await self._login(client, state)
            tap = None
            if client.supports_extension("pipelining"):
                if client.protocol is None:
                    raise SMTPServerDisconnected("Connection lost")
                tap = ReplyTap.attach(client.protocol)  # after STARTTLS: it taps the TLS transport
        except BaseException:
            client.close()
            raise
        return _Connection(client, last_used=time.monotonic(), tap=tap)

    async def _login(self, client: SMTP, state: Attempt) -> None:
        if self._tls_mode == "none" and not self._addr.is_loopback:
            _log.error(
                "smtp.credentials_withheld",
                extra={"delivery_id": state.delivery_id, "reason": "connection is not TLS"},
            )
            raise _Failed(_transient("auth_requires_tls", fault="pause"))
        state.phase = "auth"
        if not client.supports_extension("auth"):
            _log.error("smtp.auth_unsupported", extra={"delivery_id": state.delivery_id})
            raise _Failed(_transient("auth_unsupported", fault="pause"))
        await client.login(self._settings.username, self._settings.password.reveal())

    async def _local_hostname(self) -> str:
        if self._ehlo_name is None:
            fqdn = await asyncio.to_thread(socket.getfqdn)
            self._ehlo_name = fqdn if fqdn.isascii() and _HOSTNAME.fullmatch(fqdn) else "localhost"
        return self._ehlo_name

    async def close(self) -> None:
        """QUIT and close every idle connection (errors ignored); connections still in use are
        closed when their attempt ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(conn.client) for conn in idle))

    # ---- classification ---------------------------------------------------------------------

    def _classify(self, exc: Exception, state: Attempt) -> SendResult:
        result = self._verdict(exc, state)
        if result.fault is None and state.phase == "connect" and result.outcome == "transient_failure":
            # the server did not let us in at all: counted toward MAIL_PROVIDER_PAUSE_AFTER (SPEC §12)
            result = replace(result, fault="connect")
        return result

    def _verdict(self, exc: Exception, state: Attempt) -> SendResult:
        phase = state.phase
        after_dot = phase == "after_dot"
        extra = {"delivery_id": state.delivery_id, "phase": phase}
        if isinstance(exc, _Failed):
            return exc.result
        if isinstance(exc, SMTPResponseException) and exc.code >= 200:
            code, reply = exc.code, exc.message
            if isinstance(exc, SMTPAuthenticationError):
                _log.error("smtp.auth_failed", extra={**extra, "smtp_code": code})
                return _transient("auth_failed", code, reply, fault="pause")
            if isinstance(exc, SMTPSenderRefused):
                if code >= 500:
                    _log.error(
                        "smtp.sender_refused",
                        extra={**extra, "smtp_code": code, "sender": mask_address(exc.sender)},
                    )
                    return _transient("sender_refused", code, reply, fault="pause")
                return _transient("sender_refused", code, reply)
            error_class = f"{_PHASE_NAMES.get(phase, phase)}_refused"
            if code == _AUTH_REQUIRED:  # authentication or TLS we are not configured for: ours to fix
                _log.error("smtp.auth_required", extra={**extra, "smtp_code": code})
                return _transient(error_class, code, reply, fault="pause")
            if 500 <= code < 600 and phase in ("rcpt", "data", "after_dot"):
                return SendResult("permanent_failure", code, server_text(reply), error_class)
            return _transient(error_class, code, reply)
        if _certificate_refused(exc):
            _log.error("smtp.certificate_refused", extra=extra)
            return SendResult("transient_failure", error_class="tls_verify_failed", ambiguous=after_dot, fault="pause")
        if isinstance(exc, TimeoutError):
            return SendResult("transient_failure", error_class="timeout", ambiguous=after_dot)
        if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
            return SendResult("transient_failure", error_class="tls_error", ambiguous=after_dot)
        if isinstance(exc, SMTPConnectError):
            return _transient("connect_failed")
        if isinstance(exc, (SMTPServerDisconnected, OSError)):
            return SendResult("transient_failure", error_class="connection_lost", ambiguous=after_dot)
        if isinstance(exc, SMTPException):
            # includes a malformed reply (code -1): after the dot we cannot know what happened
            return SendResult("transient_failure", error_class="protocol_error", ambiguous=after_dot)
        _log.error("smtp.unexpected_error", extra={**extra, "error_type": type(exc).__name__})
        return SendResult("transient_failure", error_class="internal_error", ambiguous=after_dot)


_AUTH_REQUIRED = 530


def _certificate_refused(exc: BaseException) -> bool:
    """The server's certificate failed verification (also when aiosmtplib wrapped the error)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_PHASE_NAMES = {"after_dot": "data", "ehlo": "helo", "connect": "greeting", "validate": "noop"}


def _stale(exc: BaseException) -> bool:
    if isinstance(exc, SMTPResponseException):
        return exc.code == SMTPStatus.domain_unavailable
    return isinstance(exc, ConnectionError)


async def _hello(client: SMTP) -> None:
    try:
        await client.ehlo()
    except SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def _quit(client: SMTP) -> None:
    try:
        async with asyncio.timeout(_QUIT_TIMEOUT):
            await client.quit()
    except (SMTPException, OSError, TimeoutError):
        pass
    finally:
        client.close()


_WIRE_ADDRESS = re.compile(r"[!-~]+@[!-~]+")  # printable ASCII, no space: what a normalised address is


def _wire_safe(address: str) -> bool:
    return len(address) <= 320 and _WIRE_ADDRESS.fullmatch(address) is not None and "<" not in address
