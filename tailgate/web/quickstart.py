"""The Quick start page: the exact settings for each client, filled in with this gateway's URL.

The settings are those observed in ``clients.md`` (which base URL each client wants, which API
it speaks). No real key is needed: the gateway knows the caller from the tailnet, so every
client gets a placeholder key (``-``). Each client lists the models the viewer may use with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tailgate.catalog import granted_models
from tailgate.http.messages import Request, Response
from tailgate.web.common import Viewer, Web

APIS = {
    "chat": "openai_chat",
    "responses": "openai_responses",
    "anthropic": "anthropic_messages",
    "gemini": "gemini_generate_content",
}


@dataclass(frozen=True, slots=True)
class Snippet:
    label: str
    code: str
    api: str | None = None
    """Shown only when the viewer has a model for this API (``None``: always)."""


@dataclass(frozen=True, slots=True)
class Guide:
    key: str
    name: str
    summary: str
    models: list[str]
    snippets: list[Snippet]


def base_url(public_url: str, host: str | None) -> str:
    """``server.public_url`` if set, else ``http://`` and the ``Host`` the browser asked for."""
    if public_url:
        return public_url.rstrip("/")
    return f"http://{host or '127.0.0.1:8080'}"


def models_by_api(viewer: Viewer) -> dict[str, list[str]]:
    """The viewer's models for each client API (``chat``, ``responses``, ``anthropic``, ``gemini``)."""
    runtime = viewer.runtime
    out: dict[str, list[str]] = {api: [] for api in APIS}
    for provider_id, model, _ in granted_models(runtime, viewer.identity):
        provider = runtime.routing.providers[provider_id]
        for api, flag in APIS.items():
            if provider.compatibility.enabled(flag):
                out[api].append(model)
    return out


def _first(models: Sequence[str], fallback: str) -> str:
    return models[0] if models else fallback


def guides(url: str, models: dict[str, list[str]]) -> list[Guide]:
    """Every client of ``clients.md``, configured for the gateway at ``url``.

    A client that speaks several APIs shows the settings for those the viewer has models on.
    """
    return [_relevant(g, models) for g in _all_guides(url, models)]


def _relevant(guide: Guide, models: dict[str, list[str]]) -> Guide:
    kept = [s for s in guide.snippets if s.api is None or models[s.api]]
    return replace(guide, snippets=kept or guide.snippets[:1])


def _all_guides(url: str, models: dict[str, list[str]]) -> list[Guide]:
    chat, responses = models["chat"], models["responses"]
    anthropic, gemini = models["anthropic"], models["gemini"]
    openai_any = list(dict.fromkeys([*chat, *responses]))
    m_chat = _first(chat, "MODEL")
    m_resp = _first(responses, "MODEL")
    m_ant = _first(anthropic, "MODEL")
    m_gem = _first(gemini, "MODEL")
    return [
        Guide(
            "curl",
            "curl",
            "Any HTTP client: OpenAI-style requests under /v1. The key can be anything.",
            openai_any,
            [
                Snippet(
                    api="chat",
                    label="Chat Completions",
                    code=f"curl {url}/v1/chat/completions \\\n"
                    '  -H "content-type: application/json" \\\n'
                    f'  -d \'{{"model": "{m_chat}", "messages": [{{"role": "user", "content": "Hello"}}]}}\'',
                ),
                Snippet(
                    api="anthropic",
                    label="Anthropic Messages",
                    code=f"curl {url}/v1/messages \\\n"
                    '  -H "content-type: application/json" -H "anthropic-version: 2023-06-01" \\\n'
                    f'  -d \'{{"model": "{m_ant}", "max_tokens": 256, '
                    '"messages": [{"role": "user", "content": "Hello"}]}\'',
                ),
            ],
        ),
        Guide(
            "openai",
            "OpenAI Python SDK",
            "Chat Completions and Responses.",
            openai_any,
            [
                Snippet(
                    "Python",
                    "from openai import OpenAI\n\n"
                    f'client = OpenAI(base_url="{url}/v1", api_key="-")\n'
                    "reply = client.chat.completions.create(\n"
                    f'    model="{m_chat}", messages=[{{"role": "user", "content": "Hello"}}]\n'
                    ")\n"
                    "print(reply.choices[0].message.content)",
                ),
            ],
        ),
        Guide(
            "anthropic",
            "Anthropic Python SDK",
            "Messages API; the base URL has no /v1.",
            anthropic,
            [
                Snippet(
                    "Python",
                    "from anthropic import Anthropic\n\n"
                    f'client = Anthropic(base_url="{url}", api_key="-")\n'
                    "message = client.messages.create(\n"
                    f'    model="{m_ant}", max_tokens=1024,\n'
                    '    messages=[{"role": "user", "content": "Hello"}],\n'
                    ")\n"
                    "print(message.content[0].text)",
                ),
            ],
        ),
        Guide(
            "genai",
            "Google Gen AI Python SDK",
            "generateContent; the base URL has no version.",
            gemini,
            [
                Snippet(
                    "Python",
                    "from google import genai\n\n"
                    f'client = genai.Client(api_key="-", http_options={{"base_url": "{url}"}})\n'
                    f'reply = client.models.generate_content(model="{m_gem}", contents="Hello")\n'
                    "print(reply.text)",
                ),
            ],
        ),
        Guide(
            "claude-code",
            "Claude Code",
            'Set these in your shell (or in ~/.claude/settings.json under "env").',
            anthropic,
            [
                Snippet(
                    "Shell",
                    f"export ANTHROPIC_BASE_URL={url}\nexport ANTHROPIC_AUTH_TOKEN=-\n"
                    + (f"export ANTHROPIC_MODEL={m_ant}\n" if anthropic else "")
                    + "claude",
                ),
            ],
        ),
        Guide(
            "codex",
            "Codex CLI",
            "A custom provider in ~/.codex/config.toml; Codex speaks the Responses API only.",
            responses,
            [
                Snippet(
                    "~/.codex/config.toml",
                    f'model = "{m_resp}"\nmodel_provider = "tailgate"\n\n'
                    "[model_providers.tailgate]\n"
                    'name = "tailgate"\n'
                    f'base_url = "{url}/v1"\n'
                    'wire_api = "responses"',
                ),
            ],
        ),
        Guide(
            "opencode",
            "OpenCode",
            "A provider in opencode.json. For Anthropic models use the @ai-sdk/anthropic package with "
            f"the same baseURL; for Gemini, @ai-sdk/google with {url}/v1beta.",
            openai_any,
            [
                Snippet(
                    "opencode.json",
                    "{\n"
                    '  "$schema": "https://opencode.ai/config.json",\n'
                    '  "provider": {\n'
                    '    "tailgate": {\n'
                    '      "npm": "@ai-sdk/openai-compatible",\n'
                    '      "name": "tailgate",\n'
                    f'      "options": {{"baseURL": "{url}/v1", "apiKey": "-"}},\n'
                    f'      "models": {{"{m_chat}": {{}}}}\n'
                    "    }\n"
                    "  }\n"
                    "}",
                ),
            ],
        ),
        Guide(
            "gemini-cli",
            "Gemini CLI",
            "Environment variables; the model goes on the command line.",
            gemini,
            [
                Snippet(
                    "Shell",
                    f"export GOOGLE_GEMINI_BASE_URL={url}\nexport GEMINI_API_KEY=-\ngemini -m {m_gem}",
                ),
            ],
        ),
        Guide(
            "cline",
            "Cline",
            "Provider settings: pick the API your model speaks. The API key can be anything.",
            list(dict.fromkeys([*chat, *anthropic, *gemini])),
            [
                Snippet("OpenAI Compatible", f"Base URL: {url}/v1\nAPI key:  -\nModel ID: {m_chat}", "chat"),
                Snippet("Anthropic", f"Base URL: {url}/v1\nAPI key:  -\nModel:    {m_ant}", "anthropic"),
                Snippet("Gemini", f"Base URL: {url}\nAPI key:  -\nModel:    {m_gem}", "gemini"),
            ],
        ),
        Guide(
            "roo-code",
            "Roo Code",
            'In VS Code, choose the "OpenAI Compatible" API provider.',
            chat,
            [Snippet("Provider settings", f"Base URL: {url}/v1\nAPI key:  -\nModel:    {m_chat}")],
        ),
    ]


async def quickstart_page(web: Web, viewer: Viewer, request: Request) -> Response:
    url = base_url(web.gateway.config.server.public_url, request.header_str(b"host"))
    return web.render(
        "quickstart.html",
        viewer,
        active="quickstart",
        url=url,
        guides=guides(url, models_by_api(viewer)),
    )
