"""Several worker processes on one port: shared load, shared store, reload, metrics, clean shutdown."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from tailgate.config.defaults import DEMO_CONFIG

CHAT = orjson.dumps({"model": "demo-fast", "messages": [{"role": "user", "content": "hi"}]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


@dataclass
class Workers:
    process: subprocess.Popen[bytes]
    port: int
    database: Path
    output: str = ""

    def chat(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("POST", "/v1/chat/completions", body=CHAT, headers={"content-type": "application/json"})
        assert conn.getresponse().status == 200
        conn.close()

    def pid(self) -> int:
        """The process id of whichever worker answers a fresh connection."""
        return int(orjson.loads(_get(self.port, "/healthz")[1])["pid"])


@contextlib.contextmanager
def workers(config: str, tmp_path: Path, *, log_level: str = "WARNING") -> Iterator[Workers]:
    """``tailgate serve --workers 2`` on ``config``; on exit it must stop cleanly on SIGTERM."""
    path = tmp_path / "tailgate.hujson"
    path.write_text(config)
    port = _free_port()
    running = Workers(
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tailgate",
                "serve",
                "--config",
                str(path),
                "--listen",
                f"127.0.0.1:{port}",
                "--database",
                str(tmp_path / "tailgate.db"),
                "--workers",
                "2",
                "--log-level",
                log_level,
            ],
            env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        ),
        port,
        tmp_path / "tailgate.db",
    )
    try:
        deadline = time.monotonic() + 30
        answered: set[int] = set()
        while len(answered) < 2:  # both workers listen: each has answered a fresh connection
            with contextlib.suppress(OSError):
                answered.add(running.pid())
            assert time.monotonic() < deadline, f"workers did not start (answered: {answered})"
            if len(answered) < 2:
                time.sleep(0.05)
        yield running
    finally:
        running.process.send_signal(signal.SIGTERM)
        running.output = running.process.communicate(timeout=60)[0].decode()
    assert running.process.returncode == 0, running.output


def test_workers_share_the_port_and_the_store(tmp_path: Path) -> None:
    with workers(DEMO_CONFIG, tmp_path) as running:
        pids = {running.pid() for _ in range(60)}
        assert len(pids) == 2 and running.process.pid not in pids
        for _ in range(40):
            running.chat()
    with sqlite3.connect(running.database) as db:
        assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 40


def test_sighup_reloads_every_worker_and_a_broken_edit_keeps_the_last_good_config(tmp_path: Path) -> None:
    def config(models: str) -> str:
        return DEMO_CONFIG.replace('"models": ["demo-fast", "demo-smart"]', f'"models": [{models}]')

    assert '"models": ["demo-fast", "demo-smart"]' in DEMO_CONFIG
    path = tmp_path / "tailgate.hujson"
    with workers(config('"demo-fast"'), tmp_path, log_level="INFO") as running:

        def models_seen() -> set[str]:
            """The model lists served, asked of both workers (fresh connections spread over them)."""
            seen = set()
            for _ in range(20):
                status, body = _get(running.port, "/v1/models")
                assert status == 200
                seen.add(",".join(sorted(m["id"] for m in orjson.loads(body)["data"])))
            return seen

        def wait_for(expected: set[str]) -> None:
            deadline = time.monotonic() + 10
            while models_seen() != expected:
                assert time.monotonic() < deadline, f"still serving {models_seen()}, expected {expected}"
                time.sleep(0.1)

        wait_for({"demo-fast"})
        path.write_text(config('"demo-fast", "demo-smart"') + "\n{ broken")
        running.process.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert models_seen() == {"demo-fast"}  # the broken edit is refused; the last good config stays
        path.write_text(config('"demo-fast", "demo-smart"'))
        running.process.send_signal(signal.SIGHUP)
        wait_for({"demo-fast,demo-smart"})
    assert "keeping the last good config" in running.output


def test_quota_leases_of_every_worker_are_given_back_at_a_clean_stop(tmp_path: Path) -> None:
    old = '"demo:<user>": {"capacity": "$5.00", "rate": "$5.00/day", "on_exceed": "reject"}'
    assert DEMO_CONFIG.count(old) == 1
    # Large and without refill: every admission takes or uses a lease, and the balance only moves
    # by what is charged.
    config = DEMO_CONFIG.replace(old, '"demo:<user>": {"capacity": "$1000.00"}')
    with workers(config, tmp_path) as running:
        for _ in range(40):
            running.chat()
        leased: dict[int, int] = {}
        for _ in range(40):  # fresh connections reach both workers
            health = orjson.loads(_get(running.port, "/healthz")[1])
            leased[health["pid"]] = health["quota_leased_admissions"]
        assert len(leased) == 2 and sum(leased.values()) > 0  # requests were admitted from leases
    with sqlite3.connect(running.database) as db:
        costs = [row[0] for row in db.execute("SELECT cost_nd FROM records")]
    assert len(costs) == 40 and all(cost > 0 for cost in costs)
    with sqlite3.connect(f"{running.database}.quotas") as db:
        (balance,) = db.execute("SELECT balance_nd FROM quota_buckets").fetchone()
    assert balance == 1000 * 10**9 - sum(costs)  # no reservation and no lease left behind


def test_metrics_count_the_requests_of_every_worker(tmp_path: Path) -> None:
    assert DEMO_CONFIG.count('{"role": "admin"}') == 1
    config = DEMO_CONFIG.replace('{"role": "admin"}', '{"role": "admin", "read_metrics": true}')
    with workers(config, tmp_path) as running:
        pids = set()
        for _ in range(30):
            running.chat()
            pids.add(running.pid())
        assert len(pids) == 2

        def total_requests() -> float:
            status, text = _get(running.port, "/metrics")
            assert status == 200
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.decode().splitlines()
                if line.startswith("tailgate_requests_total{")
            )

        deadline = time.monotonic() + 10
        while {total_requests() for _ in range(6)} != {30.0}:  # every worker answers with all 30
            assert time.monotonic() < deadline, "metrics did not count every worker's requests"
            time.sleep(0.2)
