"""The ``tailgate`` command: the only code that prints and chooses exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from tailgate import __version__
from tailgate.config.model import Config

log = logging.getLogger("tailgate")

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    """``2026-11-22T17:13:00Z INFO tailgate.proxy: message key=value …`` (UTC)."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and v is not None]
        return f"{line} {' '.join(extra)}" if extra else line


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tailgate", description="An AI gateway for your tailnet.")
    parser.add_argument("--version", action="version", version=f"tailgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="path to the HuJSON configuration file")
    source.add_argument("--demo", action="store_true", help="run with the built-in demo configuration")
    serve.add_argument("--listen", action="append", help="HOST:PORT or unix:/path (repeatable)")
    serve.add_argument("--database", help="override server.database")
    serve.add_argument("--log-level", default=os.environ.get("TAILGATE_LOG_LEVEL", "INFO"))

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.path)
    parser.error(f"unknown command {args.command}")
    return 2


def _check_config(path: str) -> int:
    from tailgate.config.loader import load_config_file

    result = load_config_file(path)
    for warning in result.warnings:
        print(f"warning: {warning}")
    for error in result.errors:
        print(f"error: {error}")
    if result.errors:
        print(f"{path}: {len(result.errors)} error(s), {len(result.warnings)} warning(s)")
        return 1
    print(f"{path}: valid ({len(result.warnings)} warning(s))")
    return 0


def _load(args: argparse.Namespace) -> Config | None:
    from tailgate.config.loader import load_config, load_config_file

    if args.demo:
        from tailgate.config.defaults import DEMO_CONFIG

        result = load_config(DEMO_CONFIG, environ=os.environ, path=None)
    else:
        result = load_config_file(args.config)
    for warning in result.warnings:
        log.warning("config: %s", warning)
    for error in result.errors:
        log.error("config: %s", error)
    return result.config


def _serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    config = _load(args)
    if config is None:
        log.error("the configuration has errors; not starting")
        return 1
    import dataclasses

    server = config.server
    if args.listen:
        server = dataclasses.replace(server, listen=tuple(args.listen))
    if args.database:
        server = dataclasses.replace(server, database=args.database)
    if args.demo and not args.database and not server.database:
        from tailgate.app import _default_data_dir

        server = dataclasses.replace(server, database=os.path.join(_default_data_dir(), "demo.db"))
    config = dataclasses.replace(config, server=server)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - non-Linux platforms
        loop_factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_run(config, args))
    return 0


async def _run(config: Config, args: argparse.Namespace) -> None:
    from tailgate.app import Gateway
    from tailgate.config.watch import ConfigWatcher

    gateway = Gateway(config)
    addresses = await gateway.start()
    for address in addresses:
        log.info("listening on http://%s", address)
    if args.demo:
        first = addresses[0] if addresses else "127.0.0.1:8080"
        example = '{"model":"demo-fast","messages":[{"role":"user","content":"hello"}]}'
        log.info("demo mode: try  curl http://%s/v1/chat/completions -d '%s'", first, example)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = None
    if args.config:
        watcher = ConfigWatcher(args.config, gateway.apply_config, environ=os.environ, current=config)
        watcher.start()
        loop.add_signal_handler(signal.SIGHUP, watcher.reload)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests")
    if watcher is not None:
        await watcher.stop()
    with contextlib.suppress(Exception):
        await gateway.stop()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
