"""Several worker processes on one port: shared load, shared store, clean shutdown."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tailgate.config.defaults import DEMO_CONFIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def test_workers_share_the_port_and_the_store(tmp_path: Path) -> None:
    config = tmp_path / "tailgate.hujson"
    config.write_text(DEMO_CONFIG)
    database = tmp_path / "tailgate.db"
    port = _free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tailgate",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
            "--database",
            str(database),
            "--workers",
            "2",
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        pids = {orjson.loads(_get(port, "/healthz")[1])["pid"] for _ in range(60)}
        assert len(pids) == 2 and process.pid not in pids
        body = orjson.dumps({"model": "demo-fast", "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(40):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"}
            )
            assert conn.getresponse().status == 200
            conn.close()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 40


def test_sighup_reloads_every_worker_and_a_broken_edit_keeps_the_last_good_config(tmp_path: Path) -> None:
    def config(models: str) -> str:
        return DEMO_CONFIG.replace('"models": ["demo-fast", "demo-smart"]', f'"models": [{models}]')

    path = tmp_path / "tailgate.hujson"
    assert '"models": ["demo-fast", "demo-smart"]' in DEMO_CONFIG
    path.write_text(config('"demo-fast"'))
    port = _free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    process = subprocess.Popen(
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
            str(tmp_path / "t.db"),
            "--workers",
            "2",
            "--log-level",
            "INFO",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def models_seen() -> set[str]:
        """The model lists served, asked of both workers (fresh connections spread over them)."""
        seen = set()
        for _ in range(20):
            status, body = _get(port, "/v1/models")
            assert status == 200
            seen.add(",".join(sorted(m["id"] for m in orjson.loads(body)["data"])))
        return seen

    def wait_for(expected: set[str]) -> None:
        deadline = time.monotonic() + 10
        while models_seen() != expected:
            assert time.monotonic() < deadline, f"still serving {models_seen()}, expected {expected}"
            time.sleep(0.1)

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        wait_for({"demo-fast"})
        path.write_text(config('"demo-fast", "demo-smart"') + "\n{ broken")
        process.send_signal(signal.SIGHUP)
        time.sleep(1.5)
        assert models_seen() == {"demo-fast"}  # the broken edit is refused; the last good config stays
        path.write_text(config('"demo-fast", "demo-smart"'))
        process.send_signal(signal.SIGHUP)
        wait_for({"demo-fast,demo-smart"})
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert "keeping the last good config" in output


def test_metrics_count_the_requests_of_every_worker(tmp_path: Path) -> None:
    path = tmp_path / "tailgate.hujson"
    assert DEMO_CONFIG.count('{"role": "admin"}') == 1
    path.write_text(DEMO_CONFIG.replace('{"role": "admin"}', '{"role": "admin", "read_metrics": true}'))
    port = _free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    process = subprocess.Popen(
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
            str(tmp_path / "t.db"),
            "--workers",
            "2",
            "--log-level",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if _get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.1)
        body = orjson.dumps({"model": "demo-fast", "messages": [{"role": "user", "content": "hi"}]})
        pids = set()
        for _ in range(30):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"}
            )
            assert conn.getresponse().status == 200
            conn.close()
            pids.add(orjson.loads(_get(port, "/healthz")[1])["pid"])
        assert len(pids) == 2

        def total_requests() -> float:
            status, text = _get(port, "/metrics")
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
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
