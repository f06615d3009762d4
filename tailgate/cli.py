"""The ``tailgate`` command: the only code that prints and chooses exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from tailgate import __version__, garbage
from tailgate.config.model import Config

if TYPE_CHECKING:
    from tailgate.store import Store

log = logging.getLogger("tailgate")
_QUIET_IN_FLIGHT = 8
"""Requests in flight at or below which the worker's cycle collector may run (see garbage.py)."""

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
    serve.add_argument(
        "--workers", type=int, help="worker processes (default: server.workers, else one per CPU core)"
    )
    serve.add_argument("--log-level", default=os.environ.get("TAILGATE_LOG_LEVEL", "INFO"))

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path")

    keys = sub.add_parser("keys", help="manage gateway API keys (for machines outside the tailnet)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for PRINCIPAL and print it (shown once)")
    create.add_argument("principal", help="the name the key stands for in grants (build-bot)")
    create.add_argument("--expires", help="lifetime, such as 90d or 12h (default: never expires)")
    create.add_argument("--note", default="", help="a note shown in key lists")
    keys_list = keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("id")
    for command in (create, keys_list, revoke):
        _store_options(command)

    explain = sub.add_parser("explain", help="show which grants apply to a caller and a model, and why")
    explain.add_argument("--config", required=True, help="path to the HuJSON configuration file")
    explain.add_argument("--as", dest="principal", required=True, help="login name, tag string or key name")
    explain.add_argument("--model", required=True, help="provider/model (or a model id routing resolves)")
    explain.add_argument("--tags", help="the caller's tags, comma-separated (makes it a tagged node)")
    explain.add_argument("--groups", help="the caller's groups, comma-separated")

    quotas = sub.add_parser("quotas", help="show quota bucket balances")
    _store_options(quotas)

    migrate = sub.add_parser("migrate", help="apply pending database migrations")
    _store_options(migrate)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check-config":
        return _check_config(args.path)
    commands = {"keys": _keys, "explain": _explain, "quotas": _quotas, "migrate": _migrate}
    return commands[args.command](args)


def _store_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config", help="the configuration file (its server.database is used)")
    command.add_argument("--database", help="database path or URL (overrides the configuration's)")


def _check_config(path: str) -> int:
    from tailgate.config.loader import load_config_file

    result = load_config_file(path)
    for warning in result.warnings:
        if warning not in result.fail_closed:
            print(f"warning: {warning}")
    for error in result.errors:
        print(f"error: {error}")
    for refused in result.fail_closed:
        print(f"error: {refused} (requests that use it will be refused)")
    if result.errors or result.fail_closed:
        errors = len(result.errors) + len(result.fail_closed)
        print(f"{path}: {errors} error(s), {len(result.warnings)} warning(s)")
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
    workers = args.workers if args.workers is not None else (server.workers or os.cpu_count() or 1)
    if workers <= 1:
        _run_loop(config, args)
        return 0
    return _serve_workers(config, args, workers)


def _run_loop(
    config: Config,
    args: argparse.Namespace,
    *,
    worker: int = 0,
    workers: int = 1,
    sockets: dict[str, socket.socket] | None = None,
) -> None:
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - non-Linux platforms
        loop_factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_run(config, args, worker=worker, workers=workers, sockets=sockets))


def _serve_workers(config: Config, args: argparse.Namespace, workers: int) -> int:
    """Migrate once, bind what must be shared, then fork the workers."""
    from tailgate.http.server import split_host_port
    from tailgate.store import open_store
    from tailgate.workers import bind_inherited, check_port, supervise

    for address in config.server.listen:
        if not address.startswith("unix:") and split_host_port(address)[1] == 0:
            log.error("%s: several workers need a fixed port, not 0", address)
            return 1
        try:
            check_port(address)
        except OSError as exc:
            log.error("cannot listen on %s: %s", address, exc.strerror or exc)
            return 1
    store = open_store(config.server.database)
    store.migrate()
    store.close()
    sockets = {a: sock for a in config.server.listen if (sock := bind_inherited(a)) is not None}
    log.info("starting %d workers", workers)

    def run_worker(index: int) -> int:
        _run_loop(config, args, worker=index, workers=workers, sockets=sockets)
        return 0

    return supervise(workers, run_worker)


async def _run(
    config: Config,
    args: argparse.Namespace,
    *,
    worker: int = 0,
    workers: int = 1,
    sockets: dict[str, socket.socket] | None = None,
) -> None:
    from tailgate.app import Gateway
    from tailgate.config.watch import ConfigWatcher

    gateway = Gateway(config, worker=worker, workers=max(workers, 1))
    addresses = await gateway.start(sockets=sockets, reuse_port=sockets is not None)
    proxy = gateway.proxy
    garbage.settle(busy=lambda: proxy.in_flight > _QUIET_IN_FLIGHT)
    if worker == 0:
        for address in addresses:
            log.info("listening on http://%s", address)
    if args.demo and worker == 0:
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


# -- admin commands ------------------------------------------------------------------------------


class _Failure(Exception):
    """A command cannot go on; the message is printed as ``error: …`` and the exit code is 1."""


def _admin_command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _Failure as failure:
            print(f"error: {failure}", file=sys.stderr)
        except Exception as exc:  # the store or the filesystem: report it, never a traceback
            print(f"error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1

    return command


def _config_file(path: str) -> Config:
    from tailgate.config.loader import load_config_file

    result = load_config_file(path)
    if result.config is None:
        raise _Failure(f"{path}: " + "; ".join(result.errors))
    return result.config


@contextlib.contextmanager
def _open_store(args: argparse.Namespace) -> Iterator[Store]:
    """The store ``serve`` would use: ``--database``, else the config's, else the default file."""
    from tailgate.store import open_store

    database = args.database
    if database is None and args.config:
        database = _config_file(args.config).server.database
    try:
        store = open_store(database or "")
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    try:
        yield store
    finally:
        store.close()


@_admin_command
def _keys(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from tailgate.config.units import parse_duration

    expires_at = None
    if args.keys_command == "create" and args.expires:
        try:
            seconds = parse_duration(args.expires, allow_days=True)
        except ValueError as exc:
            raise _Failure(f"--expires: {exc}") from None
        if seconds <= 0:
            raise _Failure("--expires must be a positive duration, such as 90d")
        expires_at = datetime.now(UTC) + timedelta(seconds=int(seconds))
    with _open_store(args) as store:
        store.migrate()
        if args.keys_command == "create":
            try:
                info, secret = store.create_key(args.principal, expires_at=expires_at, note=args.note)
            except ValueError as exc:
                raise _Failure(str(exc)) from None
            print(secret)
            until = f"expires {_when(info.expires_at)}" if info.expires_at else "never expires"
            print(
                f"created key {info.id} for {info.principal} ({until}); it is shown only this once",
                file=sys.stderr,
            )
            return 0
        if args.keys_command == "revoke":
            if not store.revoke_key(args.id):
                raise _Failure(f"no active key {args.id!r}")
            print(f"revoked key {args.id}")
            return 0
        now = datetime.now(UTC)
        rows = [
            [
                k.id,
                k.principal,
                k.prefix + "…",
                k.state(now),
                _when(k.created_at),
                _when(k.expires_at),
                k.note,
            ]
            for k in store.list_keys()
        ]
    if not rows:
        print("no gateway keys")
        return 0
    print(_table(["ID", "PRINCIPAL", "KEY", "STATE", "CREATED", "EXPIRES", "NOTE"], rows))
    return 0


@_admin_command
def _explain(args: argparse.Namespace) -> int:
    from tailgate.api import comma_list, hypothetical_identity, split_model
    from tailgate.errors import GatewayError
    from tailgate.grants import GrantTable
    from tailgate.routing import RoutingTable

    config = _config_file(args.config)
    identity = hypothetical_identity(
        args.principal, tags=comma_list(args.tags), groups=comma_list(args.groups)
    )
    try:
        provider_id, model = split_model(RoutingTable(config.providers), args.model)
    except GatewayError as exc:
        raise _Failure(exc.message) from None
    print(GrantTable(config).explain(identity, provider_id, model))
    return 0


@_admin_command
def _quotas(args: argparse.Namespace) -> int:
    """Balances refilled to now: under the config's definitions when given, else as stored."""
    from tailgate.quotas import BucketSpec, QuotaLedger, quota_of, refill, spec_of

    definitions = _config_file(args.config).quotas if args.config else None
    now_us = time.time_ns() // 1000
    rows = []
    with _open_store(args) as store:
        store.migrate()
        states = QuotaLedger(store).states()
    for state in states:
        rate = _rate_text(state.rate_amount, state.rate_period)
        spec = BucketSpec(state.name, "", state.capacity, state.rate_amount, state.rate_period)
        if definitions is not None:
            quota = quota_of(state.name, definitions)
            if quota is None or quota.invalid is not None:
                continue  # deleted or unusable: the gateway drops or refuses it
            rate, spec = quota.rate_text, spec_of(state.name, quota)
        refill(state, spec, now_us)
        rows.append(
            [
                state.name,
                _dollars(state.balance),
                _dollars(state.capacity),
                rate or "-",
                _when_us(state.updated_us),
            ]
        )
    if not rows:
        print("no quota buckets in use yet")
        return 0
    print(_table(["BUCKET", "BALANCE", "CAPACITY", "RATE", "UPDATED"], rows))
    return 0


@_admin_command
def _migrate(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        applied = store.migrate()
        total = len(store.applied_migrations())
    if applied:
        print("applied: " + ", ".join(applied))
    else:
        print(f"the database is up to date ({total} migrations)")
    return 0


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _when_us(us: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(us // 1_000_000))


def _dollars(nanodollars: int) -> str:
    from tailgate.config.units import format_dollars

    return format_dollars(nanodollars)


def _rate_text(amount: int, period: int) -> str:
    from tailgate.config.units import RATE_PERIODS

    if amount <= 0:
        return ""
    unit = next((u for u, seconds in RATE_PERIODS.items() if seconds == period), f"{period}s")
    return f"{_dollars(amount)}/{unit}"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
