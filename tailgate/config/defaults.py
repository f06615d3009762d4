"""Config texts shipped with tailgate: the ``--demo`` config and a new instance's starting config."""

from __future__ import annotations

DEMO_CONFIG = """\
// tailgate demo configuration (used by `tailgate serve --demo`).
// The "demo" provider is built in: it answers every API dialect itself, with no upstream and
// no key, so you can try clients, grants, quotas and the dashboard without spending anything.
{
  "providers": {
    "demo": {
      "type": "demo", // built-in; needs no baseurl or apikey
      "name": "Demo provider (no upstream, for trials)",
      "description": "Canned, streaming-capable answers; costs are estimated as if real.",
      "models": ["demo-fast", "demo-smart"],
      // Serve all four client APIs: OpenAI Chat and Responses, Anthropic Messages, Gemini.
      "compatibility": {
        "openai_chat": true,
        "openai_responses": true,
        "anthropic_messages": true,
        "gemini_generate_content": true,
      },
      // Price the demo models like real ones so the dashboard shows realistic costs.
      "cost_basis": "openai",
      "model_cost_map": [
        {"match": "demo-fast", "as": "gpt-4o-mini"},
        {"match": "demo-smart", "as": "gpt-4o"},
      ],
    },
  },

  "grants": [
    // Requests from this machine (loopback) are the admin and may use every model,
    // charged to a per-user demo budget.
    {
      "src": ["(loopback)"],
      "app": {
        "tailscale.com/cap/aperture": [
          {"role": "admin"},
          {"models": "**", "quotas": [{"bucket": "demo:<user>"}]},
        ],
      },
    },
  ],

  "quotas": {
    // One bucket per caller: $5 to start with, refilled at $5 a day.
    "demo:<user>": {"capacity": "$5.00", "rate": "$5.00/day", "on_exceed": "reject"},
  },
}
"""
"""HuJSON for ``tailgate serve --demo``: the built-in demo provider, loopback as admin, a demo budget."""

NEW_INSTANCE_CONFIG = """\
// tailgate configuration (Aperture-compatible HuJSON: comments and trailing commas are fine).
// Reference: docs/configuration.md. Values may use ${ENV_VAR} macros, e.g. "apikey": "${OPENAI_API_KEY}".
{
  "grants": [
    // (a) Admins may edit this configuration and see everyone's usage.
    // Replace the example login with your own, and remove "*" only AFTER adding yourself,
    // or nobody will be able to manage this instance.
    {
      "src": ["example-user@example.com", "*"],
      "app": {"tailscale.com/cap/aperture": [{"role": "admin"}]},
    },
    // (b) Everyone is a user: without a role, a caller is refused.
    {
      "src": ["*"],
      "app": {"tailscale.com/cap/aperture": [{"role": "user"}]},
    },
    // (c) Everyone may use every model of every provider.
    {
      "src": ["*"],
      "app": {"tailscale.com/cap/aperture": [{"models": "**"}]},
    },
    // (d) Example hook wiring, disabled by its empty src: send tool-using requests to "oso".
    {
      "src": [],
      "app": {
        "tailscale.com/cap/aperture": [
          {
            "send_hooks": [
              {
                "name": "oso",
                "events": ["tool_call_entire_request"],
                "send": ["user_message", "tools", "request_body", "response_body"],
              },
            ],
          },
        ],
      },
    },
  ],

  "providers": {
    "openai": {
      "baseurl": "https://api.openai.com",
      "apikey": "YOUR_OPENAI_API_KEY",
      "models": ["gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-5-codex"],
      "compatibility": {
        "openai_chat": true,
        "openai_responses": true,
        "anthropic_messages": false,
      },
    },
    "anthropic": {
      "baseurl": "https://api.anthropic.com",
      "apikey": "YOUR_ANTHROPIC_API_KEY",
      "authorization": "x-api-key",
      "models": ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5"],
      "compatibility": {
        "openai_chat": false,
        "openai_responses": false,
        "anthropic_messages": true,
      },
    },
  },

  "hooks": {
    "oso": {
      "url": "https://api.osohq.com/api/agents/v1/model-request",
      "apikey": "YOUR_OSO_API_KEY",
    },
  },
}
"""
"""HuJSON a new instance starts from (Aperture's documented default, with placeholder keys)."""
