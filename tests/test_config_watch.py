import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tailgate.config.loader import load_config_file
from tailgate.config.model import Config
from tailgate.config.watch import ConfigWatcher

CAP = "tailscale.com/cap/aperture"
POLL = 0.02


def config_text(models: list[str], **extra: Any) -> str:
    doc = {
        "providers": {"p": {"baseurl": "https://p.example", "models": models}},
        "grants": [{"src": ["*"], "app": {CAP: [{"role": "admin"}, {"models": "**"}]}}],
        **extra,
    }
    return json.dumps(doc, indent=2)


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.005) + 1):
        if condition() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.005)
    assert condition(), "condition not met in time"


def start_watch(path: Path, seen: list[Config], **kwargs: Any) -> ConfigWatcher:
    current = load_config_file(path, {}).config
    watcher = ConfigWatcher(path, seen.append, environ={}, poll_interval=POLL, current=current, **kwargs)
    watcher.start()
    return watcher


def test_an_edit_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"]))

    async def scenario() -> None:
        seen: list[Config] = []
        watcher = start_watch(path, seen)
        try:
            await asyncio.sleep(POLL * 3)
            assert seen == []
            path.write_text(config_text(["a", "bb"]))
            await wait_until(lambda: len(seen) == 1)
            assert seen[0].providers["p"].models == ("a", "bb")
            assert watcher.current is seen[0]
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_a_broken_edit_keeps_the_last_good_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"]))

    async def scenario() -> None:
        seen: list[Config] = []
        watcher = start_watch(path, seen)
        good = watcher.current
        try:
            with caplog.at_level(logging.INFO, logger="tailgate.config"):
                path.write_text('{"providers": {"p": {"apikey": "${NOPE}"}},, }')
                await wait_until(lambda: any(r.levelno == logging.ERROR for r in caplog.records))
                assert seen == [] and watcher.current is good
                (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
                assert "keeping the last good config" in error.getMessage()
                assert f"{path}:1:44: expected a \"quoted\" key or '}}', found ','" in error.getMessage()
                path.write_text(config_text(["c"], quotas={"q": {"capacity": "oops"}}))
                await wait_until(lambda: len(seen) == 1)
            assert seen[0].providers["p"].models == ("c",)
            assert seen[0].quotas["q"].invalid
            messages = [(r.levelno, r.getMessage()) for r in caplog.records]
            assert any(level == logging.ERROR and "quota q: capacity" in text for level, text in messages)
            assert any(
                level == logging.INFO and "loaded (file changed) with 0 warning(s)" in text
                for level, text in messages
            )
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_unresolved_macros_on_reload_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"]))
    seen: list[Config] = []
    watcher = ConfigWatcher(
        path, seen.append, environ={"KEY": "k"}, current=load_config_file(path, {}).config
    )
    path.write_text(config_text(["${MODEL}"]))
    with caplog.at_level(logging.ERROR, logger="tailgate.config"):
        result = watcher.reload()
    assert result.errors == ["unsubstituted macros: [MODEL]"]
    assert seen == [] and "unsubstituted macros: [MODEL]" in caplog.text


def test_an_atomic_replace_and_a_sighup_reload(tmp_path: Path) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"]))

    async def scenario() -> None:
        seen: list[Config] = []
        watcher = start_watch(path, seen)
        try:
            staged = tmp_path / "staged.hujson"
            staged.write_text(config_text(["b"]))
            os.replace(staged, path)
            await wait_until(lambda: len(seen) == 1)
            assert seen[0].providers["p"].models == ("b",)
            result = watcher.reload()
            assert result.config is not None and len(seen) == 2
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_a_missing_file_is_logged_once_and_its_return_is_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"]))

    async def scenario() -> None:
        seen: list[Config] = []
        watcher = start_watch(path, seen)
        try:
            with caplog.at_level(logging.WARNING, logger="tailgate.config"):
                path.unlink()
                await asyncio.sleep(POLL * 6)
                assert [r.getMessage() for r in caplog.records] == [
                    f"config file {path} is missing; keeping the current config"
                ]
                assert seen == []
                path.write_text(config_text(["back"]))
                await wait_until(lambda: len(seen) == 1)
            assert seen[0].providers["p"].models == ("back",)
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_an_edit_made_before_the_watch_started_is_not_missed(tmp_path: Path) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"]))
    current = load_config_file(path, {}).config
    path.write_text(config_text(["a", "edited"]))

    async def scenario() -> None:
        seen: list[Config] = []
        watcher = ConfigWatcher(path, seen.append, environ={}, poll_interval=POLL, current=current)
        watcher.start()
        await watcher.stop()
        assert [c.providers["p"].models for c in seen] == [("a", "edited")]

    asyncio.run(scenario())


def test_a_failing_handler_is_logged_and_watching_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"]))
    calls: list[Config] = []

    def handler(config: Config) -> None:
        calls.append(config)
        if len(calls) == 1:
            raise RuntimeError("swap failed")

    async def scenario() -> None:
        watcher = ConfigWatcher(
            path, handler, environ={}, poll_interval=POLL, current=load_config_file(path, {}).config
        )
        watcher.start()
        try:
            with caplog.at_level(logging.ERROR, logger="tailgate.config"):
                path.write_text(config_text(["b"]))
                await wait_until(lambda: len(calls) == 1)
                path.write_text(config_text(["cc"]))
                await wait_until(lambda: len(calls) == 2)
            assert "applying the new config" in caplog.text and "swap failed" in caplog.text
            assert watcher.current is calls[1]
        finally:
            await watcher.stop()

    asyncio.run(scenario())


def test_startup_only_settings_are_flagged_on_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_text(config_text(["a"], server={"listen": "127.0.0.1:8080"}))
    seen: list[Config] = []
    watcher = ConfigWatcher(path, seen.append, environ={}, current=load_config_file(path, {}).config)
    path.write_text(config_text(["a"], server={"listen": "127.0.0.1:9090", "workers": 0}))
    with caplog.at_level(logging.WARNING, logger="tailgate.config"):
        watcher.reload()
    assert len(seen) == 1 and seen[0].server.listen == ("127.0.0.1:9090",)
    assert [r.getMessage() for r in caplog.records] == [
        "config: server.listen changed; it takes effect at the next restart"
    ]
