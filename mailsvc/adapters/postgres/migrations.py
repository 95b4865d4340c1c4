"""Schema migrations (alembic, `migrations/`) and the startup check that the schema is at head."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine


def migrations_dir() -> Path:
    """The `migrations/` folder: beside the package (source checkout) or in the working directory."""
    for candidate in (Path(__file__).resolve().parents[3] / "migrations", Path("migrations")):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("migrations/ folder not found beside the mailsvc package or in the working dir")


def _config(dsn: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["dsn"] = dsn
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config("")).get_current_head()
    assert head is not None
    return head


async def _in_thread(fn: object, *args: object) -> None:
    # alembic's env.py runs its own event loop: keep it off ours
    await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]


async def upgrade(dsn: str, revision: str = "head") -> None:
    await _in_thread(command.upgrade, _config(dsn), revision)


async def downgrade(dsn: str, revision: str = "base") -> None:
    await _in_thread(command.downgrade, _config(dsn), revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        try:
            row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
        except ProgrammingError:
            return None
    return None if row is None else str(row[0])


class SchemaNotAtHead(Exception):
    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(
            f"database schema is at {current or 'no revision'}, this build needs {head}: run `mailsvc migrate`"
        )


async def require_head(engine: AsyncEngine) -> None:
    head, current = head_revision(), await current_revision(engine)
    if current != head:
        raise SchemaNotAtHead(current, head)
