"""The gateway: wires configuration, identity, routing, the proxy, the store and the web surface.

:class:`Gateway` owns the long-lived services (upstream pool, identity resolver, recorder,
store) and the current :class:`~tailgate.runtime.Runtime`, which a reload replaces atomically.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tailgate import __version__, catalog
from tailgate.config.model import Config
from tailgate.dialects import OPERATIONS, Operation
from tailgate.errors import GatewayError, MethodNotAllowed, NotFound, error_body
from tailgate.http.client import UpstreamPool
from tailgate.http.messages import HeaderView, Request, Response, StreamingResponse
from tailgate.http.server import HttpServer, ServerSettings
from tailgate.identity import Identity
from tailgate.identity.peer import ConnectionCache, Peer
from tailgate.identity.resolve import IdentityResolver
from tailgate.metering import finalize
from tailgate.proxy import Exchange, Proxy
from tailgate.quotas import QuotaLedger
from tailgate.recorder import Recorder, worker_recorder
from tailgate.recording import RecordingProcess
from tailgate.router import Router, dialect_for_path, match_inference
from tailgate.runtime import Runtime, build_runtime
from tailgate.store import Store, open_store

log = logging.getLogger("tailgate")


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        pool: UpstreamPool | None = None,
        data_dir: str | None = None,
        worker: int = 0,
        workers: int = 1,
        recording: str | None = None,
    ) -> None:
        """``recording`` (``process`` or ``thread``) overrides ``server.recording``."""
        self.config = config
        self.worker, self.workers = worker, workers
        self.store = store if store is not None else open_store(config.server.database)
        self.store.migrate()
        self.data_dir = Path(data_dir or _default_data_dir())
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = QuotaLedger(self.store)
        self._generation = 1
        self.runtime: Runtime = build_runtime(config, self.ledger, self._generation)
        self.settings = ServerSettings(max_body_bytes=config.server.max_body_bytes)
        self.pool = pool or UpstreamPool(connect_timeout=config.server.upstream_connect_timeout)
        self.resolver = IdentityResolver(config.server.identity, self.store)
        self.recorder: Recorder[Exchange] | RecordingProcess
        if (recording or config.server.recording) == "process":
            self.recorder = RecordingProcess(
                config,
                database=self.store.url,
                data_dir=str(self.data_dir),
                worker=worker,
                workers=workers,
            )
        else:
            self.recorder = worker_recorder(
                self.store,
                finalize,
                self.ledger,
                data_dir=str(self.data_dir),
                worker=worker,
                workers=workers,
                retention=config.database.retention,
            )
        self.proxy = Proxy(lambda: self.runtime, self.pool, self.identify, self.recorder.submit)
        self.router = Router()
        self.server = HttpServer(self.handle, self.render_error, self.settings)
        self.started_at = time.time()
        self._mount()
        from tailgate.api import register_api
        from tailgate.metrics import register_metrics
        from tailgate.web import register_dashboard

        self.mount(register_api)
        self.mount(register_dashboard)
        self.metrics = register_metrics(self, self.router)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(
        self,
        listen: list[str] | None = None,
        *,
        sockets: dict[str, socket.socket] | None = None,
        reuse_port: bool = False,
    ) -> list[str]:
        """Start recording and listening; returns the bound addresses.

        ``sockets`` are listeners bound by a supervisor and inherited; ``reuse_port`` lets
        several worker processes bind the same TCP port.
        """
        await asyncio.to_thread(self.ledger.apply_definitions, self.config.quotas)
        self.recorder.start()
        inherited = sockets or {}
        for address in listen or list(self.config.server.listen):
            await self.server.listen(address, sock=inherited.get(address), reuse_port=reuse_port)
        return self.server.addresses

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting; let in-flight requests and streams finish; write what is pending."""
        cut = await self.server.shutdown(drain_timeout)
        if cut:
            log.warning("shutdown: %d request(s) still running after %g s were cut", cut, drain_timeout)
        await self.pool.aclose()
        await self.resolver.aclose()
        await asyncio.to_thread(self.recorder.close, drain_timeout)
        await asyncio.to_thread(self.ledger.close)
        self.store.close()

    def apply_config(self, config: Config) -> None:
        """Swap in a new configuration; in-flight requests keep the one they started with.

        Settings that only take effect at start-up (``listen``, ``database``, ``workers``) keep
        their running values. Applying the configuration already in effect does nothing.
        """
        from tailgate.api import keep_startup_settings

        config, _ = keep_startup_settings(self.config, config)  # the watcher and the API say which
        if config == self.config:
            return
        self._generation += 1
        self.runtime = build_runtime(config, self.ledger, self._generation)
        self.config = config
        self.settings.max_body_bytes = config.server.max_body_bytes
        self.recorder.apply_config(config, self._generation)
        self.pool.connect_timeout = config.server.upstream_connect_timeout
        log.info("configuration %d in effect", self._generation)
        task = asyncio.get_running_loop().run_in_executor(None, self.ledger.apply_definitions, config.quotas)
        task.add_done_callback(_log_failure)

    # -- identity --------------------------------------------------------------------------

    async def identify(self, request: Request) -> Identity:
        conn = request.conn
        cache = conn.identity_cache
        if cache is None:
            cache = conn.identity_cache = ConnectionCache()
        peer = Peer(
            transport="unix" if conn.transport_kind == "unix" else "tcp",
            ip=conn.peer_ip,
            port=conn.peer_port,
            listener=conn.listener,
        )
        return await self.resolver.resolve(peer, HeaderView(request.headers), cache)

    # -- dispatch --------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response | StreamingResponse | None:
        path = request.path
        inference = match_inference(path)
        if inference is not None:
            operation, model = inference
            if request.method == "POST":
                await self.proxy.handle(request, operation, model)
                return None
            if operation is Operation.RESPONSES and request.header(b"upgrade"):
                return _refuse_websocket()
            return self.render_error(
                path, MethodNotAllowed(f"{request.method} is not allowed on {path}; use POST")
            )
        handlers = self.router.lookup(path)
        if handlers is None:
            return self.render_error(path, NotFound(f"no such endpoint: {request.method} {path}"))
        handler = handlers.get(request.method)
        if handler is None:
            allowed = ", ".join(sorted(handlers))
            return self.render_error(
                path, MethodNotAllowed(f"{request.method} is not allowed on {path} ({allowed})")
            )
        try:
            return await handler(request)
        except GatewayError as error:
            return self.render_error(path, error)

    def render_error(self, path: str, error: GatewayError) -> Response:
        dialect = dialect_for_path(path)
        headers = [(n.encode(), v.encode()) for n, v in error.headers]
        return Response(error.status, error_body(error, dialect), headers)

    def _mount(self) -> None:
        r = self.router
        r.add("GET", "/", self._root)
        r.add("GET", "/healthz", self._healthz)
        r.add("GET", "/v1/models", self._models)
        r.add_prefix("GET", "/v1/models/", self._model)
        r.add("GET", "/models", self._models)
        r.add("GET", "/v1beta/models", self._gemini_models)
        r.add("GET", "/api/providers", self._providers)

    def mount(self, register: Callable[[Gateway, Router], None]) -> None:
        """Let another module (API, dashboard, metrics) add its routes."""
        register(self, self.router)

    # -- small endpoints -------------------------------------------------------------------

    async def _root(self, request: Request) -> Response:
        return Response.html(_ROOT_PAGE.format(version=__version__))

    async def _healthz(self, request: Request) -> Response:
        stats = self.recorder.stats
        return Response.json(
            {
                "status": "ok",
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": int(time.time() - self.started_at),
                "config_generation": self.runtime.generation,
                "records_pending": stats.submitted - stats.written - stats.dropped,
                "quota_transactions": self.ledger.transactions,
                "quota_leased_admissions": self.ledger.leased_admissions,
                "quota_lease_top_ups": self.ledger.lease_top_ups,
            }
        )

    async def _models(self, request: Request) -> Response:
        identity = await self.identify(request)
        if request.header(b"anthropic-version") is not None:
            return Response.json(catalog.anthropic_model_list(self.runtime, identity))
        return Response.json(catalog.openai_model_list(self.runtime, identity))

    async def _model(self, request: Request) -> Response:
        identity = await self.identify(request)
        model_id = request.path[len("/v1/models/") :]
        model = catalog.openai_model(self.runtime, identity, model_id)
        if model is None:
            raise NotFound(f'model "{model_id}" does not exist or you do not have access to it')
        return Response.json(model)

    async def _gemini_models(self, request: Request) -> Response:
        identity = await self.identify(request)
        return Response.json(catalog.gemini_model_list(self.runtime, identity))

    async def _providers(self, request: Request) -> Response:
        identity = await self.identify(request)
        return Response.json(catalog.provider_list(self.runtime, identity))


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not apply quota definitions: %s", future.exception())


def _refuse_websocket() -> Response:
    """Codex tries the Responses API over a WebSocket first; refuse at once so it uses HTTP."""
    info = OPERATIONS[Operation.RESPONSES]
    error = GatewayError("this gateway serves the Responses API over HTTP only; use POST /v1/responses")
    error.status = 426
    body = error_body(error, info.dialect)
    return Response(426, body, [(b"upgrade", b"HTTP/1.1")])


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tailgate")


_ROOT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tailgate</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; line-height: 1.5">
<h1>tailgate {version}</h1>
<p>This is an AI gateway. Point your LLM clients at <code>/v1</code> with any placeholder API key.</p>
<p>The dashboard is at <a href="/ui/">/ui/</a>.</p>
</body></html>
"""
