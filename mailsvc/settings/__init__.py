"""Typed, frozen process settings read from the environment (and `.env`), validated once.

- `values.py`   the value types (`Secret`, `HostPort`) and the parsers from text
- `declare.py`  `setting(...)`, `@settings_group` and the one loader that walks the declarations
- `connections.py`, `behaviour.py`   every setting, declared on its field in its group: variable,
  parser, default, one line of meaning (what the service talks to; how it does its work)
- `groups.py`   the root `Settings`, one field per group
- `load.py`     `load_settings`: the walk, then the rules across fields; `describe`
- `docs.py`     `.env.example` and the README table, generated from the declarations

Adding a setting: declare the field in its group, read it where it is used, and run
`make settings-docs` (the README's Configuration section has the steps).
"""

from mailsvc.settings.behaviour import (
    LOG_LEVELS,
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
    OtelExporter,
    OtlpProtocol,
    PostgresSettings,
    RedisSettings,
    SmtpMode,
    SmtpSettings,
    SmtpTls,
    TelemetrySettings,
)
from mailsvc.settings.declare import SettingsError
from mailsvc.settings.groups import Settings
from mailsvc.settings.load import describe, load_settings
from mailsvc.settings.values import (
    HostPort,
    Secret,
    format_duration,
    parse_bool,
    parse_byte_size,
    parse_dsn,
    parse_duration,
    parse_host_port,
    parse_list,
)

__all__ = [
    "LOG_LEVELS",
    "HostPort",
    "HttpSettings",
    "OperatorSettings",
    "OtelExporter",
    "OtlpProtocol",
    "PostgresSettings",
    "ProcessSettings",
    "ProviderPolicySettings",
    "RedisSettings",
    "RetentionSettings",
    "RetrySettings",
    "Secret",
    "Settings",
    "SettingsError",
    "SmtpMode",
    "SmtpSettings",
    "SmtpTls",
    "StreamSettings",
    "TelemetrySettings",
    "TemplateSettings",
    "WorkerSettings",
    "describe",
    "format_duration",
    "load_settings",
    "parse_bool",
    "parse_byte_size",
    "parse_dsn",
    "parse_duration",
    "parse_host_port",
    "parse_list",
]
