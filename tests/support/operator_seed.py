"""A large, varied deliveries table built in SQL (generate_series), for operator read tests.

Row `g` (1..n) is deterministic: statuses, sources, templates, tags, recipients and creation times
vary with `g`; pairs of rows share a `created_at` so the id tie-break of the keyset is exercised.
Nothing is due: queued rows wait until 2100 and `sending` claims expire then too, so a running
service's scheduler leaves the table alone. Queued and sending ones get their `delivery_queue` row
(`sending` is a claimed one).
"""

from __future__ import annotations

import asyncpg

_DELIVERIES = """
INSERT INTO deliveries (
    delivery_id, source, status, template, locale, template_digest, priority, send_at, expires_at,
    idempotency_key, message_id, tags, attempt_count, last_error, created_at, updated_at, finished_at)
SELECT
    CAST(md5('seed:' || g) AS uuid),
    (ARRAY['notification', 'auth', 'resend'])[1 + g % 3],
    CASE WHEN s.status = 'sending' THEN 'queued' ELSE s.status END,
    (ARRAY['auth.login_code', 'notification.generic', 'auth.password_reset', NULL])[1 + g % 4],
    CASE WHEN g % 4 <> 3 THEN (ARRAY['en', 'pt-BR'])[1 + g % 2] END,
    CASE WHEN g % 4 <> 3 THEN 'digest-' || (g % 4) END,
    g % 3,
    c.created,
    CASE WHEN g % 6 = 0 THEN c.created + interval '15 minutes' END,
    'seed-' || g,
    '<seed-' || g || '@seed.example>',
    CASE WHEN g % 5 = 0 THEN '{}'::jsonb
         ELSE jsonb_build_object('tenant', 't' || (g % 7), 'campaign', 'c' || (g % 11)) END,
    CASE s.status WHEN 'suppressed' THEN 0 WHEN 'queued' THEN g % 2 WHEN 'sending' THEN 1 ELSE 1 + g % 3 END,
    CASE WHEN s.status = 'dead_lettered' THEN '550 mailbox unavailable' END,
    c.created,
    c.created + interval '1 minute',
    CASE WHEN s.status IN ('sent', 'dead_lettered', 'suppressed') THEN c.created + interval '1 minute' END
FROM generate_series(1, $1::int) g,
LATERAL (SELECT (ARRAY['sent', 'sent', 'sent', 'sent', 'sent', 'dead_lettered', 'suppressed', 'queued',
                       'sending', 'sent'])[1 + (g * 7) % 10] AS status) s,
LATERAL (SELECT $2::timestamptz - (g / 2) * interval '17 seconds' AS created) c
"""

_QUEUE = """
INSERT INTO delivery_queue (
    delivery_id, priority, next_attempt_at, attempt_count, claim_token, claim_deadline, created_at)
SELECT CAST(md5('seed:' || g) AS uuid), g % 3, timestamptz '2100-01-01',
       CASE WHEN (g * 7) % 10 = 8 THEN 1 ELSE g % 2 END,
       CASE WHEN (g * 7) % 10 = 8 THEN gen_random_uuid() END,
       CASE WHEN (g * 7) % 10 = 8 THEN timestamptz '2100-01-01' END,
       $2::timestamptz - (g / 2) * interval '17 seconds'
FROM generate_series(1, $1::int) g WHERE (g * 7) % 10 IN (7, 8)
"""

_RECIPIENTS = """
INSERT INTO delivery_recipients (delivery_id, position, kind, address, display_name, outcome, smtp_code)
SELECT CAST(md5('seed:' || g) AS uuid), 0, 'to',
       CASE WHEN g % 3 = 0 THEN 'User' || (g % 4000) || '@Example.COM' ELSE 'user' || (g % 4000) || '@example.com' END,
       'User ' || g, CASE WHEN (g * 7) % 10 IN (0, 1, 2, 3, 4, 9) THEN 'accepted' END,
       CASE WHEN (g * 7) % 10 IN (0, 1, 2, 3, 4, 9) THEN 250 END
FROM generate_series(1, $1::int) g
UNION ALL
SELECT CAST(md5('seed:' || g) AS uuid), 1, 'cc', 'cc' || (g % 1000) || '@example.org', NULL, NULL, NULL
FROM generate_series(1, $1::int) g WHERE g % 4 = 0
UNION ALL
SELECT CAST(md5('seed:' || g) AS uuid), 2, 'bcc', 'audit@example.net', NULL, NULL, NULL
FROM generate_series(1, $1::int) g WHERE g % 10 = 0
"""

_PAYLOADS = """
INSERT INTO delivery_payloads (delivery_id, subject, text_body, html_body, reply_to, headers, mime)
SELECT delivery_id, 'Subject ' || idempotency_key, 'Text body of ' || idempotency_key,
       CASE WHEN attempt_count % 2 = 0 THEN '<p>HTML body</p>' END,
       CASE WHEN attempt_count = 2 THEN '{"email": "support@example.com", "name": "Support"}' END,
       '{"X-Seed": "yes"}'::jsonb, convert_to('MIME ' || idempotency_key, 'UTF8')
FROM deliveries
"""

_ATTEMPTS = """
INSERT INTO attempts (delivery_id, number, started_at, finished_at, outcome, smtp_code, smtp_reply, error_class,
                      provider, duration_ms)
SELECT d.delivery_id, n, d.created_at + n * interval '1 second', d.created_at + n * interval '1 second',
       CASE WHEN n < d.attempt_count THEN 'transient_failure'
            WHEN d.status = 'sent' THEN 'sent'
            WHEN d.status = 'dead_lettered' THEN 'permanent_failure'
            ELSE 'transient_failure' END,
       CASE WHEN n < d.attempt_count THEN 451 WHEN d.status = 'sent' THEN 250 ELSE 550 END,
       'reply ' || n, NULL, 'stub', 10 * n
FROM delivery_states d, generate_series(1, d.attempt_count) n
WHERE d.attempt_count > 0 AND d.status <> 'sending'
"""

_DEAD_LETTERS = """
INSERT INTO dead_letters (delivery_id, reason, last_error, created_at)
SELECT delivery_id,
       (ARRAY['permanent_failure', 'attempts_exhausted', 'expired'])[1 + attempt_count % 3],
       last_error, finished_at
FROM deliveries WHERE status = 'dead_lettered'
"""


async def seed_deliveries(dsn: str, count: int) -> None:
    """`count` deliveries with recipients, payloads, attempts and dead letters; then ANALYZE."""
    conn = await asyncpg.connect(dsn)
    try:
        newest = await conn.fetchval("SELECT now() - interval '1 hour'")
        async with conn.transaction():
            await conn.execute(_DELIVERIES, count, newest)
            await conn.execute(_QUEUE, count, newest)
            await conn.execute(_RECIPIENTS, count)
            await conn.execute(_PAYLOADS)
            await conn.execute(_ATTEMPTS)
            await conn.execute(_DEAD_LETTERS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
