"""The JSON API under ``/api``: request logs, sessions, quotas, grants explained, keys, the config.

Every endpoint identifies its caller the way inference does and answers only callers with a
role. A user sees their own records, sessions and buckets; an admin sees everyone's and may
change things. Store calls run in worker threads, never on the event loop. Requests that
change state are refused when a browser sends them from another origin (:mod:`tailgate.csrf`).
Mount with ``gateway.mount(register_api)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import stat
import tempfile
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tailgate import csrf
from tailgate.api_json import (
    capture_json,
    explain_json,
    key_json,
    record_json,
    session_json,
    unused_bucket_json,
)
from tailgate.config.loader import load_config, validate_for_save
from tailgate.config.model import Config, QuotaDef
from tailgate.config.watch import RESTART_ONLY
from tailgate.errors import AccessDenied, BadRequest, GatewayError, NotFound, UnknownModel
from tailgate.grants import NO_ROLE, GrantTable
from tailgate.http.messages import Request, Response, json_object
from tailgate.identity import LOOPBACK_IDENTITY, LOOPBACK_PRINCIPAL, Identity, IdentityKind, IdentitySource
from tailgate.quotas import expand, parse_dollars
from tailgate.record import Outcome
from tailgate.store import RecordFilter, SessionFilter

if TYPE_CHECKING:
    from tailgate.app import Gateway
    from tailgate.router import Router
    from tailgate.routing import RoutingTable
    from tailgate.runtime import Runtime

log = logging.getLogger("tailgate.api")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
MAX_KEY_DAYS = 36_500
ADMIN_ONLY = "access denied: this needs the admin role"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OUTCOME_VALUES = frozenset(o.value for o in Outcome)
_OUTCOMES = ", ".join(o.value for o in Outcome)

ApiHandler = Callable[[Request], Awaitable[Response]]


def register_api(gateway: Gateway, router: Router) -> None:
    """Add the API's routes to ``router``."""
    api = _Api(gateway)
    guarded = _same_origin_only
    router.add("GET", "/api/me", api.me)
    router.add("GET", "/api/logs", api.logs)
    router.add_prefix("GET", "/api/logs/", api.log)
    router.add("GET", "/api/sessions", api.sessions)
    router.add("GET", "/api/quotas", api.quotas)
    router.add("POST", "/api/quotas/refill", guarded(api.refill))
    router.add("GET", "/api/explain", api.explain)
    router.add("GET", "/api/keys", api.keys)
    router.add("POST", "/api/keys", guarded(api.create_key))
    router.add_prefix("DELETE", "/api/keys/", guarded(api.revoke_key))
    router.add("GET", "/api/config", api.config)
    router.add("PUT", "/api/config", guarded(api.save_config))
    router.add("POST", "/aperture/config:validate", guarded(api.validate_config))


def _same_origin_only(handler: ApiHandler) -> ApiHandler:
    async def guarded(request: Request) -> Response:
        csrf.require_same_origin(request)
        return await handler(request)

    return guarded


class _Api:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    # -- who is asking ----------------------------------------------------------------------

    async def _caller(self, request: Request) -> tuple[Identity, str, Runtime]:
        """The caller, their role and the runtime to answer with; 403 without a role."""
        identity = await self.gateway.identify(request)
        runtime = self.gateway.runtime
        role = runtime.grants.role_of(identity)
        if role is None:
            raise AccessDenied(NO_ROLE)
        return identity, role, runtime

    async def _admin(self, request: Request) -> tuple[Identity, Runtime]:
        identity, role, runtime = await self._caller(request)
        if role != "admin":
            raise AccessDenied(ADMIN_ONLY)
        return identity, runtime

    # -- the caller ---------------------------------------------------------------------------

    async def me(self, request: Request) -> Response:
        identity = await self.gateway.identify(request)
        runtime = self.gateway.runtime
        grants = runtime.grants
        role = grants.role_of(identity)
        models = grants.visible_models(identity, ((p.id, m) for p, m in runtime.routing.models()))
        return Response.json(
            {
                "principal": identity.principal,
                "kind": identity.kind.value,
                "source": identity.source.value,
                "display_name": identity.display_name,
                "node_id": identity.node_id,
                "node_name": identity.node_name,
                "tags": list(identity.tags),
                "groups": list(identity.groups),
                "profile_pic": identity.profile_pic,
                "key_id": identity.key_id,
                "role": role,
                "read_metrics": grants.read_metrics(identity),
                "models": [f"{p}/{m}" for p, m in models],
            }
        )

    # -- request logs and sessions ------------------------------------------------------------

    async def logs(self, request: Request) -> Response:
        identity, role, _ = await self._caller(request)
        principal = _principal_filter(request, identity, role)
        status = request.query_value("status")
        outcome = request.query_value("outcome")
        if outcome and outcome not in _OUTCOME_VALUES:
            raise BadRequest(f'"outcome" must be one of {_OUTCOMES}, not {outcome!r}')
        filters = RecordFilter(
            principal=principal,
            model=request.query_value("model") or None,
            provider=request.query_value("provider") or None,
            status=_integer(status, "status") if status else None,
            outcome=outcome or None,
            session=request.query_value("session") or None,
            since_ms=_time_param(request, "since"),
            until_ms=_time_param(request, "until"),
        )
        page = await asyncio.to_thread(
            self.gateway.store.list_records,
            filters,
            limit=_limit(request),
            cursor=request.query_value("cursor") or None,
            scope=None if role == "admin" else identity.principal,
        )
        return Response.json(
            {"records": [record_json(r) for r in page.items], "next_cursor": page.next_cursor}
        )

    async def log(self, request: Request) -> Response:
        identity, role, _ = await self._caller(request)
        record_id = request.path[len("/api/logs/") :]
        if not record_id or "/" in record_id:
            raise NotFound(f"no such endpoint: GET {request.path}")
        record = await asyncio.to_thread(
            self.gateway.store.get_record,
            record_id,
            scope=None if role == "admin" else identity.principal,
        )
        doc = record_json(record)
        doc["capture"] = capture_json(record.capture) if record.capture is not None else None
        return Response.json(doc)

    async def sessions(self, request: Request) -> Response:
        identity, role, _ = await self._caller(request)
        filters = SessionFilter(
            principal=_principal_filter(request, identity, role),
            since_ms=_time_param(request, "since"),
            until_ms=_time_param(request, "until"),
        )
        page = await asyncio.to_thread(
            self.gateway.store.list_sessions,
            filters,
            limit=_limit(request),
            cursor=request.query_value("cursor") or None,
            scope=None if role == "admin" else identity.principal,
        )
        return Response.json(
            {"sessions": [session_json(s) for s in page.items], "next_cursor": page.next_cursor}
        )

    # -- quotas -------------------------------------------------------------------------------

    async def quotas(self, request: Request) -> Response:
        identity, role, runtime = await self._caller(request)
        own = own_buckets(runtime, identity)
        names = None if role == "admin" else list(own)
        buckets = await asyncio.to_thread(runtime.quotas.view, names)
        seen = {entry["bucket"] for entry in buckets}
        buckets.extend(unused_bucket_json(name, quota) for name, quota in own.items() if name not in seen)
        return Response.json({"buckets": sorted(buckets, key=lambda entry: str(entry["bucket"]))})

    async def refill(self, request: Request) -> Response:
        _, runtime = await self._admin(request)
        body = json_object(request.body)
        bucket, amount = body.get("bucket"), body.get("amount")
        if not isinstance(bucket, str) or not bucket:
            raise BadRequest('"bucket" must name an expanded bucket, like "daily:alice@example.com"')
        if not isinstance(amount, str):
            raise BadRequest('"amount" must be a dollar amount as a string, like "$5.00"')
        try:
            nanodollars = parse_dollars(amount)
        except ValueError as exc:
            raise BadRequest(f'"amount": {exc}') from None
        if "<" in bucket:
            raise BadRequest(
                f'"{bucket}" is a template; name the expanded bucket, like "daily:alice@example.com"'
            )
        await asyncio.to_thread(runtime.quotas.refill, bucket, nanodollars)
        (entry,) = await asyncio.to_thread(runtime.quotas.view, [bucket])
        return Response.json(entry)

    # -- grants explained ---------------------------------------------------------------------

    async def explain(self, request: Request) -> Response:
        identity, role, runtime = await self._caller(request)
        principal = request.query_value("principal")
        subject = identity
        if principal and principal != identity.principal:
            if role != "admin":
                raise AccessDenied("access denied: only admins may explain another principal's access")
            subject = hypothetical_identity(
                principal,
                tags=comma_list(request.query_value("tags")),
                groups=comma_list(request.query_value("groups")),
            )
        model = request.query_value("model")
        if not model:
            raise BadRequest('"model" is required, as provider/model')
        provider_id, model_id = split_model(runtime.routing, model)
        return Response.json(explain_json(runtime.grants, subject, provider_id, model_id))

    # -- gateway API keys ---------------------------------------------------------------------

    async def keys(self, request: Request) -> Response:
        await self._admin(request)
        listed = await asyncio.to_thread(self.gateway.store.list_keys)
        now = datetime.now(UTC)
        return Response.json({"keys": [key_json(k, now) for k in listed]})

    async def create_key(self, request: Request) -> Response:
        admin, _ = await self._admin(request)
        body = json_object(request.body)
        principal, days, note = body.get("principal"), body.get("expires_in_days"), body.get("note", "")
        if not isinstance(principal, str):
            raise BadRequest('"principal" is required: the name the key stands for in grants')
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_KEY_DAYS
        ):
            raise BadRequest(f'"expires_in_days" must be a whole number of days from 1 to {MAX_KEY_DAYS}')
        if not isinstance(note, str) or len(note) > 500:
            raise BadRequest('"note" must be a string of at most 500 characters')
        expires_at = datetime.now(UTC) + timedelta(days=days) if days is not None else None
        try:
            info, secret = await asyncio.to_thread(
                self.gateway.store.create_key, principal, expires_at=expires_at, note=note
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        log.info(
            "gateway key %s (%s…) created for %s by %s", info.id, info.prefix, principal, admin.principal
        )
        # The secret is in this answer only: no cache may keep a copy.
        no_store = [(b"cache-control", b"no-store")]
        return Response.json(
            {**key_json(info, datetime.now(UTC)), "key": secret}, status=201, headers=no_store
        )

    async def revoke_key(self, request: Request) -> Response:
        admin, _ = await self._admin(request)
        key_id = request.path[len("/api/keys/") :]
        if not key_id or not await asyncio.to_thread(self.gateway.store.revoke_key, key_id):
            raise NotFound(f'no active gateway key "{key_id}"')
        log.info("gateway key %s revoked by %s", key_id, admin.principal)
        return Response.json({"id": key_id, "state": "revoked"})

    # -- the configuration --------------------------------------------------------------------

    async def config(self, request: Request) -> Response:
        await self._admin(request)
        config = self.gateway.config
        return Response.json(
            {
                "config": config.source_text,
                "path": config.source_path,
                "warnings": list(config.warnings),
                "generation": self.gateway.runtime.generation,
            }
        )

    async def validate_config(self, request: Request) -> Response:
        identity, _ = await self._admin(request)
        problems = await asyncio.to_thread(save_problems, _config_text(request), identity)
        return Response.json({"Valid": not problems, "errors": problems})

    async def save_config(self, request: Request) -> Response:
        identity, _ = await self._admin(request)
        saved = await save_config(self.gateway, _config_text(request), identity)
        if saved.problems:
            count = len(saved.problems)
            raise BadRequest(
                f"the configuration was not saved ({count} problem(s)): " + "; ".join(saved.problems)
            )
        answer: dict[str, Any] = {
            "saved": saved.path is not None,
            "path": saved.path,
            "applied": True,
            "generation": saved.generation,
            "notes": saved.notes,
            "restart_required": saved.restart_required,
        }
        if saved.path is None:
            answer["message"] = (
                "this gateway runs without a configuration file (--demo): the new configuration "
                "is in effect in memory only, until the gateway restarts"
            )
        return Response.json(answer)


# -- saving the configuration (shared with the dashboard) -----------------------------------------


@dataclass(frozen=True, slots=True)
class SavedConfig:
    problems: list[str]
    """Why the text was refused; when not empty, nothing was written or applied."""
    path: str | None = None
    """The file written, or None when the gateway has no config file (applied in memory)."""
    generation: int = 0
    notes: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    """``server.*`` settings the text changes that only a restart applies."""


_SAVE_LOCKS: weakref.WeakKeyDictionary[Gateway, asyncio.Lock] = weakref.WeakKeyDictionary()


async def save_config(gateway: Gateway, text: str, saver: Identity) -> SavedConfig:
    """Validate ``text`` for ``saver`` (an admin), write it atomically and apply it.

    Saves through the API and the dashboard take turns. Raises ``GatewayError`` (500) when
    the file cannot be written; the running configuration is then unchanged.
    """
    lock = _SAVE_LOCKS.setdefault(gateway, asyncio.Lock())
    async with lock:
        problems = await asyncio.to_thread(save_problems, text, saver)
        if problems:
            return SavedConfig(problems)
        running = gateway.config
        path = running.source_path
        result = await asyncio.to_thread(load_config, text, environ=os.environ, path=path)
        if result.config is None:  # the environment changed between the two loads
            return SavedConfig(result.problems)
        if path is not None:
            try:
                await asyncio.to_thread(write_atomically, path, text)
            except OSError as exc:
                raise GatewayError(
                    f"could not write the configuration to {path}: {exc.strerror or exc}"
                ) from None
        config, restart = keep_startup_settings(running, result.config)
        gateway.apply_config(config)
        return SavedConfig([], path, gateway.runtime.generation, result.notes, restart)


# -- policy helpers (pure; shared with the CLI) ---------------------------------------------------


def hypothetical_identity(
    principal: str, *, tags: Iterable[str] = (), groups: Iterable[str] = ()
) -> Identity:
    """An identity for asking "what may ``principal`` do?" without that caller present.

    A tag string (``tag:ci,tag:prod``) is a tagged node with those tags; ``(loopback)`` the
    local caller; anything else a user.
    """
    if principal == LOOPBACK_PRINCIPAL:
        return dataclasses.replace(LOOPBACK_IDENTITY, groups=tuple(groups))
    tag_list = tuple(sorted(tags)) or (
        tuple(sorted(t.strip() for t in principal.split(","))) if principal.startswith("tag:") else ()
    )
    if tag_list:
        return Identity(
            principal=",".join(tag_list),
            kind=IdentityKind.TAGGED,
            source=IdentitySource.WHOIS,
            tags=tag_list,
            groups=tuple(groups),
        )
    return Identity(
        principal=principal, kind=IdentityKind.USER, source=IdentitySource.WHOIS, groups=tuple(groups)
    )


def split_model(routing: RoutingTable, name: str) -> tuple[str, str]:
    """``provider/model`` → its parts; a bare model → the provider routing prefers for it."""
    prefix, sep, rest = name.partition("/")
    if sep and rest and prefix in routing.providers:
        return prefix, rest
    serving = [p for p, m in routing.models() if m == name]
    if serving:
        best = max(serving, key=lambda p: p.preference)  # max keeps the first of equals
        return best.id, name
    if sep and rest:
        return prefix, rest
    raise UnknownModel(f'model "{name}" is not served by any configured provider; name it as provider/model')


def own_buckets(runtime: Runtime, identity: Identity) -> dict[str, QuotaDef]:
    """The usable buckets the caller's grants reference, expanded for them, with their definitions."""
    buckets: dict[str, QuotaDef] = {}
    quotas = runtime.config.quotas
    for held in runtime.grants.capabilities_of(identity):
        for ref in held.capability.quotas:
            name, quota = expand(ref, identity, quotas)
            if quota is not None and quota.invalid is None and "<" not in name:
                buckets.setdefault(name, quota)
    return buckets


def keep_startup_settings(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the running gateway's restart-only ``server`` settings, and which differed."""
    changed = [n for n in RESTART_ONLY if getattr(running.server, n) != getattr(new.server, n)]
    if not changed:
        return new, []
    kept = {n: getattr(running.server, n) for n in changed}
    return dataclasses.replace(new, server=dataclasses.replace(new.server, **kept)), [
        f"server.{n}" for n in changed
    ]


def write_atomically(path: str, text: str) -> None:
    """Replace the file at ``path`` (through symlinks) with ``text``: a reader sees old or new, never half."""
    target = os.path.realpath(path)
    fd, temp = tempfile.mkstemp(prefix=".tailgate-config-", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def save_problems(text: str, saver: Identity) -> list[str]:
    """Why ``text`` may not be saved by ``saver`` (an admin now): every warning, and a lockout."""

    def still_admin(candidate: Config) -> bool:
        return GrantTable(candidate).role_of(saver) == "admin"

    return validate_for_save(
        text,
        environ=os.environ,
        saver=saver.principal,
        saver_is_admin_now=True,
        grants_evaluator=still_admin,
    )


# -- request parsing ------------------------------------------------------------------------------


def _config_text(request: Request) -> str:
    try:
        return request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the configuration must be UTF-8 text") from None


def _principal_filter(request: Request, identity: Identity, role: str) -> str | None:
    principal = request.query_value("principal") or None
    if principal is not None and role != "admin" and principal != identity.principal:
        raise AccessDenied("access denied: only admins may see other principals' requests")
    return principal


def _limit(request: Request) -> int:
    text = request.query_value("limit")
    if not text:
        return DEFAULT_LIMIT
    limit = _integer(text, "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f'"limit" must be between 1 and {MAX_LIMIT}')
    return limit


def _integer(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f'"{name}" must be a whole number, not {text!r}') from None


def _time_param(request: Request, name: str) -> int | None:
    text = request.query_value(name)
    return parse_time_ms(text, name) if text else None


def parse_time_ms(text: str, name: str = "time") -> int:
    """ISO-8601 (UTC unless it says otherwise) or epoch milliseconds → epoch milliseconds."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f'"{name}" must be an ISO-8601 time or epoch milliseconds, not {text!r}') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def comma_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]
