"""Several worker processes serving one port: a small supervisor around ``os.fork``.

Each worker is a whole gateway (its own event loop, upstream pool, recorder and store
connections). TCP listeners are shared with ``SO_REUSEPORT``, so the kernel spreads new
connections over the workers; a Unix-socket listener is bound once here and inherited. Quotas
stay exact because every worker admits and settles through the same database transactions.

The supervisor forwards ``SIGHUP`` (reload) and ``SIGTERM``/``SIGINT`` (drain and stop) to the
workers, and restarts a worker that dies unexpectedly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from tailgate.http.server import split_host_port

log = logging.getLogger("tailgate.workers")

RESTART_DELAY = 1.0


def bind_inherited(address: str) -> socket.socket | None:
    """A listening socket for ``address`` if it must be bound once and inherited (Unix sockets)."""
    if not address.startswith("unix:"):
        return None
    path = address[5:]
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def check_port(address: str) -> None:
    """Fail early, in the supervisor, if a TCP address cannot be bound at all."""
    if address.startswith("unix:"):
        return
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, port))


def supervise(count: int, run_worker: Callable[[int], int], *, drain_timeout: float = 30.0) -> int:
    """Run ``run_worker(index)`` in ``count`` forked processes until told to stop.

    ``run_worker`` runs in the child and returns its exit code. Returns 0 after a clean stop.
    """
    children: dict[int, int] = {}
    stopping = False
    reload_requested = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            code = 1
            try:
                code = run_worker(index)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = index
        log.info("worker %d started (pid %d)", index, pid)

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_reload(signum: int, frame: object) -> None:
        nonlocal reload_requested
        reload_requested = True

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    for index in range(count):
        spawn(index)

    while children and not stopping:
        if reload_requested:
            reload_requested = False
            _signal_all(children, signal.SIGHUP)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        log.error("worker %d (pid %d) exited with %d; restarting it", index, pid, code)
        time.sleep(RESTART_DELAY)
        spawn(index)

    _signal_all(children, signal.SIGTERM)
    deadline = time.monotonic() + drain_timeout + 5
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            children.pop(pid, None)
        else:
            time.sleep(0.05)
    if children:
        log.warning("killing %d worker(s) that did not stop in time", len(children))
        _signal_all(children, signal.SIGKILL)
        for pid in list(children):
            os.waitpid(pid, 0)
    return 0


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
