"""The admin commands through ``tailgate.cli.main`` on a temporary SQLite database, and ``serve`` as a process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tailgate.cli import main
from tailgate.quotas import BucketSpec, QuotaLedger
from tailgate.store import open_store

CONFIG = """{
  "providers": {"demo": {"type": "demo", "models": ["demo-fast"], "compatibility": {"anthropic_messages": true}}},
  "grants": [
    {"src": ["admin@example.com"], "app": {"tailscale.com/cap/aperture": [{"role": "admin"}]}},
    {"src": ["tag:ci"], "app": {"tailscale.com/cap/aperture": [
      {"role": "user"}, {"models": "demo/**", "quotas": [{"bucket": "daily:<user>"}]}]}},
  ],
  "quotas": {"daily:<user>": {"capacity": "$2.00", "rate": "$1.00/day"}},
}"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "cli.db")


# -- keys -----------------------------------------------------------------------------------------


def test_keys_create_list_revoke(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = run(
        capsys, "keys", "create", "build-bot", "--expires", "90d", "--note", "evals", "--database", db
    )
    assert code == 0
    secret = out.strip()
    assert secret.startswith("tg_") and len(secret) == 43
    assert "for build-bot" in err and "shown only this once" in err and "expires 20" in err

    code, out, _ = run(capsys, "keys", "list", "--database", db)
    assert code == 0 and secret not in out
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "PRINCIPAL", "KEY", "STATE", "CREATED", "EXPIRES", "NOTE"]
    key_id = row.split()[0]
    assert row.split()[1:4] == ["build-bot", secret[:7] + "…", "active"] and row.endswith("evals")

    store = open_store(db)
    (info,) = store.list_keys()
    assert info.id == key_id and info.expires_at is not None
    store.close()

    assert run(capsys, "keys", "revoke", key_id, "--database", db)[:2] == (0, f"revoked key {key_id}\n")
    code, _, err = run(capsys, "keys", "revoke", key_id, "--database", db)
    assert code == 1 and err == f"error: no active key {key_id!r}\n"
    assert "revoked" in run(capsys, "keys", "list", "--database", db)[1]


def test_keys_refusals(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, _, err = run(capsys, "keys", "create", "tag:ci", "--database", db)
    assert code == 1 and "another meaning" in err
    code, _, err = run(capsys, "keys", "create", "bot", "--expires", "soon", "--database", db)
    assert code == 1 and err.startswith("error: --expires: duration")
    code, _, err = run(capsys, "keys", "create", "bot", "--expires", "0", "--database", db)
    assert code == 1 and "positive" in err
    code, _, err = run(capsys, "keys", "list", "--database", "mysql://x/y")
    assert code == 1 and "unsupported database URL scheme" in err
    assert run(capsys, "keys", "list", "--database", db)[1] == "no gateway keys\n"


def test_commands_use_the_configs_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    database = tmp_path / "from-config.db"
    config = tmp_path / "tailgate.hujson"
    config.write_text(CONFIG.replace('"providers"', f'"server": {{"database": "{database}"}}, "providers"'))
    assert run(capsys, "keys", "create", "bot", "--config", str(config))[0] == 0
    assert database.exists()
    assert "bot" in run(capsys, "keys", "list", "--config", str(config))[1]
    broken = tmp_path / "broken.hujson"
    broken.write_text("{")
    code, _, err = run(capsys, "keys", "list", "--config", str(broken))
    assert code == 1 and err.startswith(f"error: {broken}: ")


# -- explain --------------------------------------------------------------------------------------


def test_explain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "tailgate.hujson"
    config.write_text(CONFIG)
    code, out, _ = run(
        capsys, "explain", "--config", str(config), "--as", "tag:ci", "--model", "demo/demo-fast"
    )
    assert code == 0
    assert out.splitlines()[0] == "caller: tag:ci (tagged, via whois)"
    assert '  grants[1]: src "tag:ci" matches' in out.splitlines()
    assert out.splitlines()[-2:] == [
        'demo/demo-fast: allowed: granted by grants[1] (models "demo/**")',
        "quotas: daily:<user>",
    ]
    code, out, _ = run(
        capsys, "explain", "--config", str(config), "--as", "admin@example.com", "--model", "demo-fast"
    )
    assert code == 0
    assert (
        'demo/demo-fast: denied: access denied: model "demo/demo-fast" is not granted to admin@example.com'
        in out
    )
    code, out, _ = run(
        capsys, "explain", "--config", str(config), "--as", "bot", "--tags", "tag:ci", "--model", "demo-fast"
    )
    assert code == 0 and out.startswith("caller: tag:ci (tagged") and "allowed" in out
    code, _, err = run(capsys, "explain", "--config", str(config), "--as", "x", "--model", "gpt-9")
    assert code == 1 and "not served by any configured provider" in err


# -- quotas and migrate ---------------------------------------------------------------------------


def test_quotas(capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path) -> None:
    assert run(capsys, "quotas", "--database", db)[1] == "no quota buckets in use yet\n"
    store = open_store(db)
    ledger = QuotaLedger(store)
    day = 86_400
    ledger.reserve(
        [BucketSpec("daily:tag:ci", "daily:<user>", 2_000_000_000, 1_000_000_000, day)], 500_000_000
    )
    ledger.reserve([BucketSpec("gone:x", "gone", 1_000_000_000, 0, day)], 250_000_000)
    store.close()

    code, out, _ = run(capsys, "quotas", "--database", db)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["BUCKET", "BALANCE", "CAPACITY", "RATE", "UPDATED"]
    bucket, balance, *rest = lines[1].split()
    # Refilled to now at $1/day: a few nanodollars more than the $1.50 left after the charge.
    assert bucket == "daily:tag:ci" and balance.startswith("$1.5000") and rest[:2] == ["$2.00", "$1.00/day"]
    assert lines[2].split()[:4] == ["gone:x", "$0.75", "$1.00", "-"]

    config = tmp_path / "tailgate.hujson"
    config.write_text(CONFIG.replace("$2.00", "$1.20"))
    code, out, _ = run(capsys, "quotas", "--config", str(config), "--database", db)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2  # "gone" has no definition any more
    assert lines[1].split()[:4] == ["daily:tag:ci", "$1.20", "$1.20", "$1.00/day"]  # the new capacity caps it


def test_migrate(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, _ = run(capsys, "migrate", "--database", db)
    assert code == 0 and out.startswith("applied: m001")
    code, out, _ = run(capsys, "migrate", "--database", db)
    assert code == 0 and out.startswith("the database is up to date (")


def test_check_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "tailgate.hujson"
    config.write_text(CONFIG)
    code, out, _ = run(capsys, "check-config", str(config))
    assert code == 0 and out == f"{config}: valid (0 warning(s))\n"


# -- serve ----------------------------------------------------------------------------------------


def test_serve_demo_answers_the_api(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "TAILGATE_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "tailgate", "serve", "--demo", "--listen", f"127.0.0.1:{port}"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        me = None
        while me is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/me", timeout=2) as answer:
                    me = orjson.loads(answer.read())
            except OSError:
                time.sleep(0.05)
        assert me is not None, process.stderr.read().decode() if process.poll() is not None else "no answer"
        assert me["principal"] == "(loopback)" and me["role"] == "admin"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert process.returncode == 0
    assert (tmp_path / "tailgate" / "demo.db").exists()
