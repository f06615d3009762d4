"""The model catalog as each dialect lists it, filtered to what the caller is granted (pure)."""

from __future__ import annotations

from typing import Any

from tailgate.identity import Identity
from tailgate.runtime import Runtime

# A fixed creation time: the list must be stable between calls (clients cache it).
_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z
_CREATED_ISO = "2025-01-01T00:00:00Z"


def granted_models(runtime: Runtime, identity: Identity) -> list[tuple[str, str, str]]:
    """``(provider id, model, display name)`` for every routable model the caller may use.

    A model served by several providers is listed once, under the provider routing would pick.
    """
    grants = runtime.grants
    if grants.role_of(identity) is None:
        return []
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    pairs = sorted(
        runtime.routing.models(), key=lambda pm: -pm[0].preference
    )  # stable: keeps config order within a preference
    for provider, model in pairs:
        if not grants.decide(identity, provider.id, model).allowed:
            continue
        if model in seen:
            continue
        seen.add(model)
        out.append((provider.id, model, provider.name or provider.id))
    return out


def openai_model_list(runtime: Runtime, identity: Identity) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": _CREATED, "owned_by": provider_id}
            for provider_id, model, _ in granted_models(runtime, identity)
        ],
    }


def openai_model(runtime: Runtime, identity: Identity, model_id: str) -> dict[str, Any] | None:
    for provider_id, model, _ in granted_models(runtime, identity):
        if model == model_id:
            return {"id": model, "object": "model", "created": _CREATED, "owned_by": provider_id}
    return None


def anthropic_model_list(runtime: Runtime, identity: Identity) -> dict[str, Any]:
    data = [
        {"type": "model", "id": model, "display_name": model, "created_at": _CREATED_ISO}
        for _, model, _ in granted_models(runtime, identity)
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def gemini_model_list(runtime: Runtime, identity: Identity) -> dict[str, Any]:
    models = []
    for provider_id, model, _ in granted_models(runtime, identity):
        provider = runtime.routing.providers[provider_id]
        if not provider.compatibility.gemini_generate_content:
            continue
        models.append(
            {
                "name": f"models/{model}",
                "displayName": model,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
            }
        )
    return {"models": models}


def provider_list(runtime: Runtime, identity: Identity) -> list[dict[str, Any]]:
    """Aperture's ``GET /api/providers``: ``[{id, name, description, models, compatibility}]``."""
    grants = runtime.grants
    if grants.role_of(identity) is None:
        return []
    out = []
    for provider in runtime.routing.providers.values():
        models = [m for m in provider.models if grants.decide(identity, provider.id, m).allowed]
        if not models:
            continue
        entry: dict[str, Any] = {
            "id": provider.id,
            "name": provider.name or provider.id,
            "description": provider.description,
            "models": models,
            "compatibility": provider.compatibility.as_dict(),
        }
        if provider.type == "demo":
            entry["demo"] = True
        out.append(entry)
    return out
