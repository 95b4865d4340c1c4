"""The root of the settings: one field per group, in the order `.env.example` and the README
list them. The groups themselves are declared in `connections.py` and `behaviour.py`."""

from __future__ import annotations

from dataclasses import dataclass

from mailsvc.settings.behaviour import (
    OperatorSettings,
    ProcessSettings,
    ProviderPolicySettings,
    RetentionSettings,
    RetrySettings,
    StreamSettings,
    TemplateSettings,
    WorkerSettings,
)
from mailsvc.settings.connections import (
    HttpSettings,
    PostgresSettings,
    RedisSettings,
    SmtpSettings,
    TelemetrySettings,
)


@dataclass(frozen=True)
class Settings:
    """Every group, in the order `.env.example` and the README list them."""

    process: ProcessSettings
    http: HttpSettings
    redis: RedisSettings
    postgres: PostgresSettings
    smtp: SmtpSettings
    templates: TemplateSettings
    stream: StreamSettings
    workers: WorkerSettings
    retry: RetrySettings
    provider_policy: ProviderPolicySettings
    retention: RetentionSettings
    operator: OperatorSettings
    telemetry: TelemetrySettings
