"""No secret and no full recipient address in any log line, span or metric of a full run (SPEC §8).

`mailsvc serve` runs in smtp mode against an aiosmtpd server that requires AUTH, with HTTP tokens
configured, debug logging, OTLP export to a loopback receiver and the console span/metric
exporters on stdout. The run covers a sent delivery with one recipient refused (the server's reply
quotes the address), a dead-lettered one, a malformed command, HTTP intake and operator reads with
right and wrong tokens. Then everything the process wrote and exported is searched.
"""

from __future__ import annotations

import json
import secrets
import signal

import httpx
from redis.asyncio import Redis

from mailsvc.producer import command_fields
from tests.integration.test_telemetry import eventually
from tests.smtp_servers import ScriptedHandler, SmtpServer
from tests.support.deliveries import Ledger, smtp_env
from tests.support.otlp_receiver import OtlpReceiver, otlp_env
from tests.support.process import running_service
from tests.support.stream import new_key

PATH = "/api/v1/internal/deliveries"


async def test_logs_and_telemetry_of_a_full_run_hold_no_secret(
    service_env: dict[str, str], redis_client: Redis, stream_key: str, db: Ledger, receiver: OtlpReceiver
) -> None:
    run = secrets.token_hex(6)
    password, intake_token, operator_token = f"pw-{run}-smtp", f"tok-{run}-intake", f"tok-{run}-operator"
    marker = f"body-marker-{run}"
    ann, refused, dead, bob, bad = (f"{who}-{run}@example.org" for who in ("ann", "refused", "dead", "bob", "bad"))
    handler = ScriptedHandler(
        accept_logins=True,
        rcpt_replies={
            refused: f"550 5.1.1 <{refused}>: no such user",
            dead: f"550 5.1.1 <{dead}>: no such user",
        },
    )
    with SmtpServer(handler) as server:
        env = smtp_env(
            service_env,
            server.host_port,
            MAIL_SMTP_USERNAME="mailer",
            MAIL_SMTP_PASSWORD=password,
            MAIL_INTERNAL_HTTP_INTAKE_TOKENS=intake_token,
            MAIL_INTERNAL_HTTP_OPERATOR_TOKENS=operator_token,
            MAIL_LOG_LEVEL="debug",
            MAIL_OTEL_STDOUT_TRACES_ENABLED="true",
            MAIL_OTEL_STDOUT_METRICS_ENABLED="true",
            **otlp_env(receiver),
        )
        sent_key, dead_key, http_key = new_key("scan"), new_key("dead"), new_key("http")
        async with (
            running_service(env) as service,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=10) as client,
        ):
            body = {"subject": f"Subject {marker}", "text": f"Hello {marker}\n", "html": f"<p>{marker}</p>"}
            commands = [
                command_fields({"to": [ann, refused], **body}, sent_key, None),
                command_fields({"to": [dead], **body}, dead_key, None),
                # malformed (no text): the stored record keeps its fields, nothing else may
                command_fields({"to": [bad], "subject": marker}, None, None),
            ]
            for fields in commands:
                await redis_client.xadd(stream_key, fields)  # type: ignore[arg-type]

            intake = {"Authorization": f"Bearer {intake_token}"}
            operator = {"Authorization": f"Bearer {operator_token}"}
            response = await client.post(
                PATH, json={"to": [bob], **body}, headers={**intake, "Idempotency-Key": http_key}
            )
            assert response.status_code == 202, response.text
            wrong = {"Authorization": f"Bearer {password}"}  # a secret offered where it does not belong
            assert (await client.post(PATH, json={"to": [bob], **body}, headers=wrong)).status_code == 401
            assert (await client.get(PATH, headers=intake)).status_code == 403

            sent = await db.wait_status(sent_key)
            died = await db.wait_status(dead_key)
            http_row = await db.wait_status(http_key, source="auth")
            assert (sent["status"], died["status"], http_row["status"]) == ("sent", "dead_lettered", "sent")
            for row in (sent, died, http_row):
                detail = await client.get(f"{PATH}/{row['delivery_id']}", headers=operator)
                assert detail.status_code == 200, detail.text
            listed = await client.get(PATH, headers=operator, params={"recipient": ann})
            assert listed.status_code == 200, listed.text

            def unexported() -> list[str]:
                attempted = {s.attributes.get("mail.delivery_id") for s in receiver.spans_named("mail.attempt")}
                wanted = {str(row["delivery_id"]) for row in (sent, died, http_row)}
                return sorted(wanted - attempted)

            await eventually(unexported)
            service.send_signal(signal.SIGTERM)
            assert await service.wait_exit(30) == 0  # flushes every exporter, the console ones too

        assert ("mailer", password) in handler.logins  # the password was really in use
        assert any(marker in r.content.decode() for r in handler.received)  # and the body really sent

    captured = service.raw + service.stderr
    exported = [repr((s.name, s.attributes, s.events, s.status_message)) for s in receiver.spans_named("")]
    exported += [repr((p.metric, p.attributes)) for p in receiver.metric_points()]
    forbidden = {
        "SMTP password": password,
        "intake token": intake_token,
        "operator token": operator_token,
        "body marker": marker,
        **{f"address {a}": a for a in (ann, refused, dead, bob, bad)},
    }
    for what, secret in forbidden.items():
        leaks = [text for text in captured + exported if secret.lower() in text.lower()]
        assert not leaks, f"{what} leaked: {leaks[:3]}"

    # the scan saw what it should have: console spans and logs correlated with traces
    assert any('"name": "mail.attempt"' in line for line in captured), "no console spans on stdout"
    assert all(isinstance(json.loads(line), dict) for line in service.raw if line), "stdout is not JSON lines"
    attempt_traces = {s.trace_id for s in receiver.spans_named("mail.attempt")}
    correlated = [line for line in service.lines if line.get("trace_id") in attempt_traces and "span_id" in line]
    assert correlated, "no log line inside an attempt span carries its trace id"
