"""Run a real gateway in a background thread for tests: real sockets, real store, uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import types
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from tailgate.app import Gateway
from tailgate.config.loader import load_config
from tailgate.config.model import Config
from tailgate.record import Record
from tailgate.store import RecordFilter, Store, open_store

T = TypeVar("T")


def gateway_object_kind(obj: object) -> str | None:
    """What ``obj`` is when it belongs to the gateway (its classes, its parsers, frames of its
    code), else ``None``: for telling the gateway's cyclic garbage from other code's in a test
    process that also runs mocks and clients."""
    if isinstance(obj, types.FrameType):
        return f"frame {obj.f_code.co_name}" if "/tailgate/" in obj.f_code.co_filename else None
    module = getattr(type(obj), "__module__", "") or ""
    if module.startswith("tailgate") or module == "httptools.parser.parser":
        return type(obj).__qualname__
    return None


def config_from(text: str, environ: dict[str, str] | None = None) -> Config:
    result = load_config(text, environ=environ or {})
    assert result.config is not None, f"config errors: {result.errors}"
    return result.config


@dataclass
class RunningGateway:
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    port: int
    store: Store
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the gateway's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def flush(self, timeout: float = 10.0) -> None:
        assert self.gateway.recorder.flush(timeout), "records were not written in time"

    def records(self, **filters: Any) -> list[Record]:
        """Every stored record (newest first) after flushing, optionally filtered."""
        self.flush()
        page = self.store.list_records(RecordFilter(**filters), limit=1000)
        return list(page.items)

    def apply(self, config: Config) -> None:
        self.loop.call_soon_threadsafe(self.gateway.apply_config, config)


@contextlib.contextmanager
def running_gateway(
    config: Config | str,
    tmp_path: Path,
    *,
    store: Store | None = None,
    environ: dict[str, str] | None = None,
    recording: str | None = None,
) -> Iterator[RunningGateway]:
    """``recording="process"`` records through a recording process, as ``tailgate serve`` does;
    the default is a thread (faster to start), or ``$TAILGATE_TEST_RECORDING``."""
    recording = recording or os.environ.get("TAILGATE_TEST_RECORDING", "thread")
    if isinstance(config, str):
        config = config_from(config, environ)
    if store is None:
        store = open_store(str(tmp_path / "tailgate.db"))
    ready = threading.Event()
    done = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        gateway = Gateway(config, store=store, data_dir=str(tmp_path / "data"), recording=recording)
        addresses = await gateway.start(["127.0.0.1:0"])
        stop = asyncio.Event()
        box.update(
            gateway=gateway,
            loop=asyncio.get_running_loop(),
            stop=stop,
            port=int(addresses[0].rsplit(":", 1)[1]),
        )
        ready.set()
        await stop.wait()
        await gateway.stop(drain_timeout=10)

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(main())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()
        finally:
            done.set()

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    assert ready.wait(20), "gateway did not start"
    if "error" in box:
        raise box["error"]
    running = RunningGateway(box["gateway"], box["loop"], box["port"], store)
    try:
        yield running
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        assert done.wait(30), "gateway did not stop"
        thread.join(5)
        if "error" in box:
            raise box["error"]
