"""Starts real Lathe servers (`lathe serve`) for the conformance suite: one on SQLite and, when
LATHE_TEST_DATABASE_URL is set, one on PostgreSQL. CI always sets it (`.ci/run`), and there a
missing URL fails instead of silently skipping the Postgres lane."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
CLI = ["node", str(REPO / "packages" / "cli" / "bin" / "lathe.js")]
# The server serves the built-in tiny Qwen3 under this name too (`lathe serve --model-alias`).
ALIAS = "Qwen/Qwen3-8B"


class ServerProcess:
    def __init__(self, data_dir: Path, models_dir: Path, database_url: str | None) -> None:
        self.data_dir, self.models_dir, self.database_url = data_dir, models_dir, database_url
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def db_args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir)] + (["--database-url", self.database_url] if self.database_url else [])

    def create_key(self, name: str) -> str:
        lines = self.keys_command("create", "--name", name).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tml-"), lines
        return lines[0]

    def keys_command(self, *args: str) -> str:
        """`lathe keys ARGS` on this server's database (a process of its own); its stdout."""
        return subprocess.run([*CLI, "keys", *args, *self.db_args()], check=True, capture_output=True, text=True).stdout

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", "0", "--models-dir", str(self.models_dir), "--model-alias", f"{ALIAS}=lathe/tiny-qwen3", *self.db_args()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for line in self.proc.stdout:
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                return
        raise RuntimeError(f"server exited with {self.proc.wait()} before listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def lanes() -> list[str]:
    return ["sqlite", "postgres"]


@pytest.fixture(scope="session", params=lanes())
def server(request, tmp_path_factory):
    database_url = None
    if request.param == "postgres":
        database_url = os.environ.get("LATHE_TEST_DATABASE_URL")
        if not database_url:
            if os.environ.get("CI"):
                pytest.fail("LATHE_TEST_DATABASE_URL is not set: the PostgreSQL lane must run in CI")
            pytest.skip("PostgreSQL lane: set LATHE_TEST_DATABASE_URL (scripts/with-postgres.sh does)")
    root = tmp_path_factory.mktemp(request.param)
    proc = ServerProcess(root / "data", tmp_path_factory.getbasetemp() / "models", database_url)
    proc.keys = [proc.create_key("alice"), proc.create_key("bob")]
    proc.start()
    yield proc
    proc.stop()
