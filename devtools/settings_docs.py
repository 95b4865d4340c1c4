"""`make settings-docs`: rewrite `.env.example` and the README's settings table from the
declarations in `mailsvc/settings/` (the settings tests fail while either is stale)."""

from __future__ import annotations

import sys
from pathlib import Path

from mailsvc.settings.docs import env_example, with_table


def main(repo: Path) -> int:
    (repo / ".env.example").write_text(env_example())
    readme = repo / "README.md"
    readme.write_text(with_table(readme.read_text()))
    print("settings docs: .env.example and README.md rewritten from the declarations in mailsvc/settings/")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path.cwd()))
