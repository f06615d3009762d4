"""Who may use which model: Aperture's grants, evaluated as pure functions over the configuration.

A caller's capabilities are the union of every config grant whose ``src`` matches them and the
capability objects the tailnet policy delivered with their identity (WhoIs ``CapMap``). There
are no deny rules. The highest role wins; no role means no access. A model is granted when some
capability's ``models`` glob matches ``provider/model``; quotas, headers and hooks apply from
every capability that matches the model, or that names no models at all (a *floating* one).

:class:`GrantTable` is built once per configuration and memoises its answers, so a request
that was decided before costs a dict lookup.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from tailgate.config.grants import parse_capability, src_matches
from tailgate.config.model import BucketRef, Capability, Config, SendHook
from tailgate.errors import AccessDenied
from tailgate.identity import Identity

log = logging.getLogger(__name__)

ROLE_RANK = {"user": 1, "admin": 2}
TAILNET_ORIGIN = "tailnet policy"
NO_ROLE = "access denied: no role granted"
MAX_MEMO = 8192

_T = TypeVar("_T")
_IdentityKey = tuple[str, str, tuple[str, ...], tuple[str, ...], bytes]


@dataclass(frozen=True, slots=True)
class MatchedCapability:
    capability: Capability
    origin: str
    """Where it came from: ``grants[3]``, ``temp_grants[0]`` or ``tailnet policy``."""
    src: str
    """The ``src`` entry that matched the caller (``*``, a login, ``group:…``, a tag string)."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    role: str | None
    reason: str
    """Why: the denial message the caller sees, or which grant gave the model."""
    matched: tuple[MatchedCapability, ...] = ()
    """Every capability of the caller that applies to this model (model-scoped or floating)."""
    quotas: tuple[BucketRef, ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    send_hooks: tuple[SendHook, ...] = ()

    def check(self) -> Decision:
        """This decision if it allows the request; ``AccessDenied`` with :attr:`reason` otherwise."""
        if not self.allowed:
            raise AccessDenied(self.reason)
        return self


@functools.lru_cache(maxsize=4096)
def _segment(pattern: str) -> re.Pattern[str]:
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")))


def glob_matches(pattern: str, name: str) -> bool:
    """Whether a ``models`` glob matches ``provider/model``.

    ``*`` matches within one path segment, a ``**`` segment matches zero or more segments,
    every other character is literal. Model ids that contain ``/`` are several segments.
    """
    return _match(tuple(pattern.split("/")), tuple(name.split("/")))


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(rest, segments[skip:]) for skip in range(len(segments) + 1))
    if not segments:
        return False
    if "*" in head:
        if _segment(head).fullmatch(segments[0]) is None:
            return False
    elif head != segments[0]:
        return False
    return _match(rest, segments[1:])


def best_role(matched: Iterable[MatchedCapability]) -> str | None:
    """The highest role among ``matched`` (admin > user), or ``None``."""
    roles = [m.capability.role for m in matched if m.capability.role in ROLE_RANK]
    return max(roles, key=ROLE_RANK.__getitem__, default=None)


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


class GrantTable:
    """The configuration's grants, ready to answer for any caller and model."""

    def __init__(
        self,
        config: Config,
        *,
        capability_parser: Callable[[object, str], tuple[Capability | None, list[str]]] = parse_capability,
    ) -> None:
        self._grants = config.grants
        self._parse = capability_parser
        self._by_identity: dict[_IdentityKey, tuple[MatchedCapability, ...]] = {}
        self._decisions: dict[tuple[_IdentityKey, str, str], Decision] = {}

    def capabilities_of(self, identity: Identity) -> tuple[MatchedCapability, ...]:
        """Every capability the caller holds: matching config grants, then the tailnet policy's."""
        return self._capabilities(_identity_key(identity), identity)

    def role_of(self, identity: Identity) -> str | None:
        """The caller's highest role, or ``None`` (which means no access at all)."""
        return best_role(self.capabilities_of(identity))

    def read_metrics(self, identity: Identity) -> bool:
        """Whether the caller is an admin holding ``read_metrics``."""
        held = self.capabilities_of(identity)
        return best_role(held) == "admin" and any(m.capability.read_metrics for m in held)

    def decide(self, identity: Identity, provider_id: str, model: str) -> Decision:
        """Whether the caller may use ``provider_id``'s ``model``; which quotas, headers and hooks apply."""
        key = _identity_key(identity)
        memo_key = (key, provider_id, model)
        decision = self._decisions.get(memo_key)
        if decision is None:
            decision = self._decide(self._capabilities(key, identity), identity, provider_id, model)
            _remember(self._decisions, memo_key, decision)
        return decision

    def visible_models(
        self, identity: Identity, candidates: Iterable[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """The ``(provider id, model)`` pairs among ``candidates`` the caller may use (for ``/v1/models``)."""
        if self.role_of(identity) is None:
            return []
        return [(p, m) for p, m in candidates if self.decide(identity, p, m).allowed]

    def explain(self, identity: Identity, provider_id: str, model: str) -> str:
        """Which grants matched the caller and why the request for ``model`` is allowed or denied."""
        target = f"{provider_id}/{model}"
        lines = [f"caller: {_describe(identity)}"]
        for grant in self._grants:
            entry = next((s for s in grant.src if _src_matches(s, identity)), None)
            if entry is None:
                shown = ", ".join(grant.src) or "(none)"
                lines.append(f"  {grant.origin}: src [{shown}] does not match")
                continue
            lines.append(f'  {grant.origin}: src "{entry}" matches')
            lines.extend(f"    {_describe_capability(c, target)}" for c in grant.capabilities)
        tailnet = [m for m in self.capabilities_of(identity) if m.origin == TAILNET_ORIGIN]
        if tailnet:
            lines.append(f"  {TAILNET_ORIGIN}: delivered with the caller's identity")
            lines.extend(f"    {_describe_capability(m.capability, target)}" for m in tailnet)
        decision = self.decide(identity, provider_id, model)
        lines.append(f"role: {decision.role or 'none'}")
        verdict = "allowed" if decision.allowed else "denied"
        lines.append(f"{target}: {verdict}: {decision.reason}")
        if decision.allowed:
            for label, values in (
                ("quotas", [q.template for q in decision.quotas]),
                ("headers added", [name for name, _ in decision.add_headers]),
                ("hooks", [h.name for h in decision.send_hooks]),
            ):
                if values:
                    lines.append(f"{label}: {', '.join(values)}")
        return "\n".join(lines)

    def _capabilities(self, key: _IdentityKey, identity: Identity) -> tuple[MatchedCapability, ...]:
        held = self._by_identity.get(key)
        if held is None:
            held = self._collect(identity)
            _remember(self._by_identity, key, held)
        return held

    def _collect(self, identity: Identity) -> tuple[MatchedCapability, ...]:
        held: list[MatchedCapability] = []
        for grant in self._grants:
            entry = next((s for s in grant.src if _src_matches(s, identity)), None)
            if entry is not None:
                held.extend(MatchedCapability(c, grant.origin, entry) for c in grant.capabilities)
        for index, obj in enumerate(identity.capabilities):
            where = f"{TAILNET_ORIGIN} capability {index} of {identity.principal}"
            capability, warnings = self._parse(dict(obj), where)
            for warning in warnings:
                log.warning("%s", warning)
            if capability is not None:
                held.append(MatchedCapability(capability, TAILNET_ORIGIN, TAILNET_ORIGIN))
        return tuple(held)

    def _decide(
        self, held: tuple[MatchedCapability, ...], identity: Identity, provider_id: str, model: str
    ) -> Decision:
        role = best_role(held)
        if role is None:
            return Decision(False, None, NO_ROLE)
        target = f"{provider_id}/{model}"
        applicable = tuple(
            m
            for m in held
            if not m.capability.models or any(glob_matches(g, target) for g in m.capability.models)
        )
        granting = next((m for m in applicable if m.capability.models), None)
        if granting is None:
            reason = f'access denied: model "{target}" is not granted to {identity.principal}'
            return Decision(False, role, reason, applicable)
        glob = next(g for g in granting.capability.models if glob_matches(g, target))
        return Decision(
            allowed=True,
            role=role,
            reason=f'granted by {granting.origin} (models "{glob}")',
            matched=applicable,
            quotas=_unique(q for m in applicable for q in m.capability.quotas),
            add_headers=_unique(h for m in applicable for h in m.capability.add_headers),
            send_hooks=_unique(h for m in applicable for h in m.capability.send_hooks),
        )


def _src_matches(entry: str, identity: Identity) -> bool:
    return src_matches(entry, identity.principal, identity.tags, identity.groups)


def _identity_key(identity: Identity) -> _IdentityKey:
    caps = identity.capabilities
    # The capability objects are JSON from the tailnet policy; their canonical bytes key the memo.
    caps_key = orjson.dumps(caps, default=dict, option=orjson.OPT_SORT_KEYS) if caps else b""
    return (identity.principal, identity.kind.value, identity.tags, identity.groups, caps_key)


def _remember(memo: dict[Any, _T], key: Any, value: _T) -> None:
    if len(memo) >= MAX_MEMO:
        del memo[next(iter(memo))]
    memo[key] = value


def _describe(identity: Identity) -> str:
    parts = [f"{identity.principal} ({identity.kind.value}, via {identity.source.value}"]
    if identity.groups:
        parts.append(f"; groups {', '.join(identity.groups)}")
    if identity.node_id:
        parts.append(f"; node {identity.node_id}")
    return "".join(parts) + ")"


def _describe_capability(capability: Capability, target: str) -> str:
    parts = []
    if capability.role:
        parts.append(f"role {capability.role}")
    if capability.models:
        hit = any(glob_matches(g, target) for g in capability.models)
        parts.append(
            f"models {', '.join(capability.models)} ({'matches' if hit else 'does not match'} {target})"
        )
    else:
        parts.append("floating (any model)")
    if capability.quotas:
        parts.append("quotas " + ", ".join(q.template for q in capability.quotas))
    if capability.add_headers:
        parts.append("adds " + ", ".join(name for name, _ in capability.add_headers))
    if capability.send_hooks:
        parts.append("hooks " + ", ".join(h.name for h in capability.send_hooks))
    return "; ".join(parts)
