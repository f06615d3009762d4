"""The Models page: every model the viewer may use, where it goes, what it costs, what it draws on.

Prices are the standard-tier list prices per million tokens from the price data the gateway
meters with (reasoning tokens are billed at the output rate); a model without a price says
"unpriced". The quota buckets shown are the viewer's own, with their balances now.
"""

from __future__ import annotations

from dataclasses import dataclass

from tailgate.catalog import granted_models
from tailgate.config.model import COMPATIBILITY_FLAGS, Provider
from tailgate.http.messages import Request, Response
from tailgate.web.common import Viewer, Web
from tailgate.web.quotas import BucketView, bucket_views

ENDPOINT_LABELS = {
    "openai_chat": "OpenAI Chat",
    "openai_responses": "OpenAI Responses",
    "anthropic_messages": "Anthropic Messages",
    "gemini_generate_content": "Gemini",
    "google_generate_content": "Vertex Gemini",
    "google_raw_predict": "Vertex rawPredict",
    "bedrock_model_invoke": "Bedrock InvokeModel",
    "bedrock_converse": "Bedrock Converse",
    "experimental_gemini_cli_vertex_compat": "Gemini CLI (Vertex)",
}


def endpoints(provider: Provider) -> list[str]:
    """The client APIs a provider serves, as the page names them."""
    return [ENDPOINT_LABELS[f] for f in COMPATIBILITY_FLAGS if provider.compatibility.enabled(f)]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    provider: Provider
    model: str
    endpoints: list[str]
    prices: dict[str, str | None] | None
    buckets: list[BucketView]

    @property
    def demo(self) -> bool:
        return self.provider.type == "demo"


def load_models(viewer: Viewer) -> list[ModelEntry]:
    """The viewer's models with prices and buckets (blocking: price lookups and a store read)."""
    runtime = viewer.runtime
    identity = viewer.identity
    granted = granted_models(runtime, identity)
    wanted: dict[tuple[str, str], list[str]] = {}
    for provider_id, model, _ in granted:
        decision = runtime.grants.decide(identity, provider_id, model)
        specs, _problems = runtime.quotas.buckets_for(identity, decision.quotas)
        wanted[(provider_id, model)] = [s.name for s in specs]
    names = sorted({n for found in wanted.values() for n in found})
    views = {v.name: v for v in bucket_views(runtime, names, names)} if names else {}
    out = []
    for provider_id, model, _ in granted:
        provider = runtime.routing.providers[provider_id]
        out.append(
            ModelEntry(
                provider=provider,
                model=model,
                endpoints=endpoints(provider),
                prices=runtime.prices.unit_prices(provider, model),
                buckets=[views[n] for n in wanted[(provider_id, model)] if n in views],
            )
        )
    return out


async def models_page(web: Web, viewer: Viewer, request: Request) -> Response:
    entries = await web.run(load_models, viewer)
    providers = {e.provider.id: e.provider for e in entries}
    return web.render(
        "models.html",
        viewer,
        active="models",
        entries=entries,
        providers=list(providers.values()),
    )
