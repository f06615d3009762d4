"""Which provider serves a request: by model name, preference and compatibility flags (pure)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from tailgate.config.model import Provider
from tailgate.dialects import OPERATIONS, Operation
from tailgate.errors import EndpointNotEnabled, UnknownModel


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    model: str
    """The model id as the provider knows it (never the ``provider/`` prefix)."""
    requested: str
    """The model name exactly as the client sent it."""

    @property
    def fqn(self) -> str:
        return f"{self.provider.id}/{self.model}"


class RoutingTable:
    """Model → provider lookup built once per configuration."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self.providers = {pid: p for pid, p in providers.items() if not p.disabled}
        order = {pid: i for i, pid in enumerate(self.providers)}
        by_model: dict[str, list[Provider]] = {}
        for provider in self.providers.values():
            for model in provider.models:
                by_model.setdefault(model, []).append(provider)
        for candidates in by_model.values():
            candidates.sort(key=lambda p: (-p.preference, order[p.id]))
        self._by_model = by_model
        self._cache: dict[tuple[str, Operation], Route] = {}

    def resolve(self, requested: str, operation: Operation) -> Route:
        """The route for ``requested`` (a bare id or ``provider/model``) on ``operation``.

        Raises UnknownModel when no enabled provider serves the model, and EndpointNotEnabled
        when the providers that serve it do not enable this endpoint.
        """
        key = (requested, operation)
        route = self._cache.get(key)
        if route is not None:
            return route
        route = self._resolve(requested, operation)
        if len(self._cache) < 10_000:
            self._cache[key] = route
        return route

    def _resolve(self, requested: str, operation: Operation) -> Route:
        flag = OPERATIONS[operation].compat_flag
        prefix, sep, rest = requested.partition("/")
        if sep:
            provider = self.providers.get(prefix)
            if provider is not None and rest in provider.models:
                if not provider.compatibility.enabled(flag):
                    raise EndpointNotEnabled(
                        f'model "{requested}" is not available on this endpoint: provider '
                        f'"{provider.id}" does not enable {flag}'
                    )
                return Route(provider, rest, requested)
        candidates = self._by_model.get(requested)
        if not candidates:
            raise UnknownModel(f'model "{requested}" is not served by any configured provider')
        for provider in candidates:
            if provider.compatibility.enabled(flag):
                return Route(provider, requested, requested)
        names = ", ".join(p.id for p in candidates)
        raise EndpointNotEnabled(
            f'model "{requested}" is not available on this endpoint: its providers ({names}) '
            f"do not enable {flag}"
        )

    def models(self) -> Iterator[tuple[Provider, str]]:
        """Every (provider, model) pair that can be routed, in configuration order."""
        for provider in self.providers.values():
            for model in provider.models:
                yield provider, model
