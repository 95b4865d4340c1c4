"""How the service does its work: the process, templates, reading the command stream, attempt
workers, retries, retention and operator reads. Each field declares its variable, parser, default
and one line of meaning (`setting`); `.env.example` and the README table are generated from them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from mailsvc.domain.templates import DEFAULT_MAX_RENDERED_BYTES
from mailsvc.settings.declare import setting, settings_group
from mailsvc.settings.values import Secret, byte_size_in, int_in, non_negative_number, one_of, positive_duration

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


@settings_group
class ProcessSettings:
    """Process."""

    shutdown_timeout: timedelta = setting(
        "MAIL_SHUTDOWN_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=30),
        doc="How long SIGTERM/SIGINT waits for running attempts before cancelling them.",
    )
    log_level: str = setting(
        "MAIL_LOG_LEVEL", one_of(*LOG_LEVELS), default="info", doc="debug | info | warn | error (JSON lines on stdout)."
    )


@settings_group
class TemplateSettings:
    """Templates."""

    dir: Path = setting(
        "MAIL_TEMPLATE_DIR",
        Path,
        default=Path("templates"),
        doc="Template catalog folder (one folder per template id).",
    )
    max_rendered_bytes: int = setting(  # each rendered body (text, HTML), in UTF-8 bytes
        "MAIL_MAX_RENDERED_BYTES",
        byte_size_in(1024, 64 * 1024 * 1024),
        default=DEFAULT_MAX_RENDERED_BYTES,
        example="1MiB",
        doc="Largest rendered text or HTML body (bytes: 1048576, 512KiB, 1MiB); a larger one is render_too_large.",
    )


@settings_group
class StreamSettings:
    """Command stream consumer."""

    block_timeout: timedelta = setting(
        "MAIL_STREAM_BLOCK_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=2),
        doc="XREAD BLOCK time of the stream consumer.",
    )
    batch_size: int = setting(
        "MAIL_STREAM_BATCH_SIZE",
        int_in(1, 10_000),
        default=500,
        doc="XREAD COUNT: commands read and committed per batch.",
    )
    batch_bytes: int = setting(
        "MAIL_STREAM_BATCH_BYTES",
        byte_size_in(64 * 1024, 1024 * 1024 * 1024),
        default=4 * 1024 * 1024,
        example="4MiB",
        doc=(
            "Stream bytes a batch aims at: after a read of large commands the next reads ask for fewer"
            " (at least 1, at most MAIL_STREAM_BATCH_SIZE), so a backlog of them never holds the loop,"
            " Redis or one transaction for long."
        ),
    )


@settings_group
class WorkerSettings:
    """Attempt workers."""

    concurrency: int = setting(
        "MAIL_ATTEMPT_WORKER_CONCURRENCY",
        int_in(1, 1024),
        default=16,
        doc=(
            "Attempts sending at once in this process (the SMTP connection pool's size). While messages"
            " are small, twice as many claims are held, so a connection goes on with the next one while"
            " a result is written."
        ),
    )


@settings_group
class RetrySettings:
    """Retry."""

    base_delay: timedelta = setting(
        "MAIL_RETRY_BASE_DELAY",
        positive_duration,
        default=timedelta(seconds=30),
        doc="First retry delay; doubles per attempt, with jitter (at most MAIL_RETRY_MAX_DELAY).",
    )
    max_delay: timedelta = setting(
        "MAIL_RETRY_MAX_DELAY", positive_duration, default=timedelta(hours=1), doc="Retry delay cap."
    )
    max_attempts: int = setting(
        "MAIL_RETRY_MAX_ATTEMPTS",
        int_in(1, 1000),
        default=10,
        doc="Attempts before a delivery is dead-lettered as attempts_exhausted.",
    )


@settings_group
class ProviderPolicySettings:
    """Provider pause and rate limit."""

    rate_limit: float = setting(
        "MAIL_SMTP_RATE_LIMIT",
        non_negative_number,
        default=0.0,
        doc="Messages per second toward the SMTP provider, across all replicas (0 = unlimited).",
    )
    rate_burst: int = setting(
        "MAIL_SMTP_RATE_BURST",
        int_in(0, 1_000_000),
        default=0,
        doc="Rate limit bucket size in messages (0 = half a second's worth of MAIL_SMTP_RATE_LIMIT, at least 1).",
    )
    pause_after: int = setting(
        "MAIL_PROVIDER_PAUSE_AFTER",
        int_in(1, 1_000_000),
        default=20,
        doc="Consecutive attempts failing to connect that pause the provider.",
    )
    probe_interval: timedelta = setting(
        "MAIL_PROVIDER_PROBE_INTERVAL",
        positive_duration,
        default=timedelta(seconds=30),
        doc="While paused: one probe delivery per interval, across all replicas.",
    )


@settings_group
class RetentionSettings:
    """Retention."""

    idempotency_ttl: timedelta = setting(
        "MAIL_IDEMPOTENCY_TTL",
        positive_duration,
        default=timedelta(hours=24),
        doc="How long an idempotency key maps to its delivery (at most MAIL_DELIVERY_RETENTION).",
    )
    idempotency_hash_key: Secret = setting(
        "MAIL_IDEMPOTENCY_HASH_KEY",
        Secret,
        default=Secret(""),
        doc="Key of the HMAC over each request's digest kept with its idempotency key (SPEC §13: with a"
        " plain digest, whoever reads the database can test guesses of a login code against it until the"
        " key expires). The same on every replica; changing it turns a retry within MAIL_IDEMPOTENCY_TTL"
        " into a conflict. Empty: the plain SHA-256.",
    )
    delivery_retention: timedelta = setting(
        "MAIL_DELIVERY_RETENTION",
        positive_duration,
        default=timedelta(hours=720),
        doc="Terminal deliveries older than this (by finished_at) are deleted.",
    )
    malformed_command_retention: timedelta = setting(
        "MAIL_MALFORMED_COMMAND_RETENTION",
        positive_duration,
        default=timedelta(hours=168),
        doc="Malformed command records older than this are deleted.",
    )
    event_retention: timedelta = setting(
        "MAIL_EVENT_RETENTION",
        positive_duration,
        default=timedelta(hours=168),
        doc="Published delivery events older than this are deleted (never kept longer than MAIL_DELIVERY_RETENTION).",
    )
    suppression_ttl: timedelta = setting(
        "MAIL_SUPPRESSION_TTL",
        positive_duration,
        default=timedelta(hours=720),
        doc="How long an automatic suppression (a hard bounce at RCPT TO) lasts before it expires.",
    )
    cleanup_interval: timedelta = setting(
        "MAIL_CLEANUP_INTERVAL",
        positive_duration,
        default=timedelta(hours=1),
        doc="Retention pass interval (the first pass runs at startup).",
    )


@settings_group
class OperatorSettings:
    """Operator API."""

    request_timeout: timedelta = setting(
        "MAIL_OPERATOR_REQUEST_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=5),
        doc="Operator reads taking longer get 504.",
    )
