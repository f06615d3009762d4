import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tailgate.config import DEMO_CONFIG, NEW_INSTANCE_CONFIG, parse_capability, src_matches
from tailgate.config.loader import (
    ACCEPTED_KEYS,
    ACCEPTED_VALUES,
    LoadResult,
    load_config,
    load_config_file,
    validate_for_save,
)
from tailgate.config.model import BucketRef, Capability, Compatibility, Config, SendHook
from tailgate.config.units import format_dollars, parse_byte_size, parse_dollars, parse_duration, parse_rate

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
CAP = "tailscale.com/cap/aperture"
PROVIDERS = {"openai": {"baseurl": "https://api.openai.com", "models": ["gpt-5"]}}
ADMIN_GRANT = {"src": ["*"], "app": {CAP: [{"role": "admin"}, {"models": "**"}]}}


def load(doc: dict[str, Any] | str, environ: dict[str, str] | None = None) -> LoadResult:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    return load_config(text, environ=environ or {})


def base(**sections: Any) -> dict[str, Any]:
    """A clean config (no warnings) with ``sections`` merged over it."""
    return {"providers": PROVIDERS, "grants": [ADMIN_GRANT], **sections}


def good(doc: dict[str, Any] | str, environ: dict[str, str] | None = None) -> Config:
    result = load(doc, environ)
    assert result.problems == [], result.problems
    assert result.config is not None
    return result.config


def test_the_spec_minimal_example_loads_unchanged() -> None:
    text = """{
      "providers": {
        "anthropic": {
          "baseurl": "https://api.anthropic.com",
          "apikey": "sk-ant-test",
          "authorization": "x-api-key",
          "models": ["claude-sonnet-4-6", "claude-haiku-4-5"],
          "compatibility": { "anthropic_messages": true },
        },
      },
      "grants": [
        { "src": ["*"], "app": { "tailscale.com/cap/aperture": [ {"role": "admin"}, {"models": "**"} ] } },
      ],
    }"""
    config = good(text)
    provider = config.providers["anthropic"]
    assert provider.apikey == "sk-ant-test"
    assert provider.authorization == "x-api-key"
    assert provider.models == ("claude-sonnet-4-6", "claude-haiku-4-5")
    assert provider.compatibility.anthropic_messages and not provider.compatibility.openai_chat
    assert config.grants[0].capabilities == (Capability(role="admin"), Capability(models=("**",)))
    assert config.grants[0].origin == "grants[0]"
    assert config.source_text == text and config.warnings == ()


def test_an_empty_or_unparseable_config_is_an_error() -> None:
    assert load("  // nothing\n").errors == ["config must not be empty"]
    result = load_config(
        '{\n  "providers": {\n    "a": 1\n    "b": 2 }}', environ={}, path="/etc/tailgate.hujson"
    )
    assert result.config is None
    assert result.errors == ["/etc/tailgate.hujson:4:5: expected ',' or '}' after a member, found '\"'"]
    assert load("[1, 2]").errors == ["config must be a JSON object, not an array"]


# --- macros -------------------------------------------------------------------------------


def test_macros_are_expanded_in_string_values() -> None:
    doc = base(
        providers={"p": {"baseurl": "https://${HOST}/x", "apikey": "${KEY}", "models": ["m-${V}"]}},
        grants=[{"src": ["*"], "app": {CAP: [{"role": "admin"}, {"models": "p/**"}]}}],
    )
    config = good(doc, {"HOST": "h.example", "KEY": "sk-1", "V": "2"})
    assert config.providers["p"].baseurl == "https://h.example/x"
    assert config.providers["p"].apikey == "sk-1"
    assert config.providers["p"].models == ("m-2",)
    assert "${KEY}" in config.source_text


def test_escaped_macros_stay_literal_and_unknown_ones_are_an_error() -> None:
    config = good(base(providers={"p": {"baseurl": "https://h", "apikey": "$${KEY}", "models": ["m"]}}))
    assert config.providers["p"].apikey == "${KEY}"
    result = load(
        base(providers={"p": {"baseurl": "${A}", "apikey": "${B}${A}", "models": ["${C}", "$${D}"]}})
    )
    assert result.config is None
    assert result.errors == ["unsubstituted macros: [A, B, C]"]


def test_messages_quote_what_was_written_never_the_expanded_secret() -> None:
    doc = base(
        providers={
            "p": {
                "baseurl": "https://h",
                "apikey": "${SECRET}",
                "authorization": "${SECRET}",
                "models": ["m"],
                "add_headers": ["${SECRET}"],
            }
        }
    )
    result = load(doc, {"SECRET": "sk-live-123"})
    assert result.config is not None
    assert "provider p has invalid authorization type: ${SECRET}" in result.warnings
    assert (
        'provider p: add_headers entry "${SECRET}" must be in "Header-Name: value" format' in result.warnings
    )
    assert "sk-live-123" not in " ".join(result.problems) + repr(result.config)


# --- the validation messages of spec 2.10 ------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"grants": [ADMIN_GRANT]},
            "no providers or mcp servers defined; users will not be able to access any models",
        ),
        (base(providers={"x": {"models": ["m"]}}), "provider x has no baseurl configured"),
        (
            base(providers={"x": {"baseurl": "https://h", "models": ["m"], "authorization": "basic"}}),
            "provider x has invalid authorization type: basic",
        ),
        (
            base(providers={"x": {"baseurl": "https://h", "basurl": "h"}}),
            'unknown config key "providers.x.basurl" (did you mean "baseurl"?)',
        ),
        ({**base(), "provider": {}}, 'unknown config key "provider" (did you mean "providers"?)'),
        (
            base(providers={"x": {"baseurl": "https://h", "models": ["m"], "add_headers": ["X-A=1"]}}),
            'provider x: add_headers entry "X-A=1" must be in "Header-Name: value" format',
        ),
        (
            base(quotas={"d:<team>": {"capacity": "$1"}}),
            'quota "d:<team>": quota name "d:<team>" has unsupported template "<team>" after colon',
        ),
        (
            base(grants=[{"src": ["*"], "app": {CAP: [{"role": "admin", "modles": "**"}]}}]),
            'unknown config key "grants[0].app[tailscale.com/cap/aperture][0].modles" (did you mean'
            ' "models"?)',
        ),
        (
            base(grants=[{"src": ["*"], "app": {CAP: [{"role": "admin"}]}, "srcs": []}]),
            'unknown config key "grants[0].srcs" (did you mean "src"?)',
        ),
        (
            base(grants=[{"src": ["*"], "app": {CAP: [{"role": "admin", "models": "anthropic/**"}]}}]),
            'grants[0]: models pattern "anthropic/**" references provider "anthropic" which does not'
            " match any declared provider",
        ),
        (
            base(grants=[{"src": ["*"], "app": {CAP: [{"role": "admin", "mcp_tools": "github/*"}]}}]),
            'grants[0]: mcp_tools pattern "github/*" references server "github" which does not match'
            " any declared MCP server",
        ),
        (
            base(grants=[{"src": ["*"], "app": {CAP: [{"role": "admin", "send_hooks": [{"name": "h"}]}]}}]),
            'grants[0]: send_hooks references undefined hook "h"',
        ),
        (
            base(
                grants=[
                    {"src": ["*"], "app": {CAP: [{"role": "admin", "quotas": [{"bucket": "daily:<user>"}]}]}}
                ]
            ),
            'grants[0]: quotas references undefined quota "daily:<user>"',
        ),
        (
            base(
                grants=[
                    {"src": ["*"], "app": {CAP: [{"role": "admin"}, {"quotas": [{"bucket": "d:<who>"}]}]}}
                ]
            ),
            'grants[0].app[tailscale.com/cap/aperture][1] quotas[0]: bucket ref "d:<who>" has'
            ' unsupported template "<who>"'
            ' (only <user> and <node>, after a "prefix:")',
        ),
        (
            base(grants=[{"src": ["*"], "app": {CAP: [{"role": "admin", "add_headers": ["nope"]}]}}]),
            'grants[0].app[tailscale.com/cap/aperture][0]: add_headers entry "nope" must be in'
            ' "Header-Name: value" format',
        ),
        (base(hooks={"h": {"apikey": "k"}}), "hook h has no url configured"),
        (
            base(hooks={"h": {"url": "ftp://h"}}),
            "hook h has invalid URL scheme (must be http:// or https://): ftp://h",
        ),
        (
            base(hooks={"h": {"url": "https://h", "authorization": "token"}}),
            "hook h has invalid authorization type: token",
        ),
        (base(exporters={"s3": {"prefix": "logs/"}}), "exporters.s3.prefix must not end with a slash"),
        (
            base(grants=[{"src": ["*"], "app": {CAP: [{"role": "user"}, {"models": "**"}]}}]),
            "no grant in grants or temp_grants assigns role:admin; nobody will be able to manage"
            " this instance",
        ),
        (
            {"providers": PROVIDERS},
            "providers are configured but no grants or temp_grants defined; all access will be denied",
        ),
        (
            '{"providers": {}, "grants": [], "providers": {}}',
            'duplicate config key "providers" (line 1, column 33)',
        ),
        (
            base(auto_cost_basis="yes"),
            "auto_cost_basis: expected a boolean (true or false), got a string; ignored",
        ),
        (
            base(providers={"x": {"baseurl": "https://h", "models": "m", "preference": "high"}}),
            "providers.x.models: expected an array, got a string; ignored",
        ),
        (
            base(providers={"x": {"baseurl": "https://h", "models": ["m"], "preference": "high"}}),
            "providers.x.preference: expected an integer, got a string; ignored",
        ),
    ],
)
def test_validation_warnings(doc: dict[str, Any] | str, expected: str) -> None:
    result = load(doc)
    assert result.config is not None and result.errors == []
    assert expected in result.warnings, result.warnings
    assert expected in result.config.warnings


def test_bad_quota_definitions_fail_closed_but_the_config_loads() -> None:
    quotas = {
        "good": {"capacity": "$10.00", "rate": "$5.00/day", "on_exceed": "reject"},
        "no-dollar": {"capacity": "10"},
        "bad-rate": {"capacity": "$1", "rate": "$1/fortnight"},
        "missing": {"rate": "$1/day"},
        "soft": {"capacity": "$1", "on_exceed": "warn"},
        "weird": 5,
    }
    result = load(base(quotas=quotas))
    assert result.config is not None and result.errors == []
    assert result.fail_closed == [
        'quota no-dollar: capacity: amount "10" must look like "$10.00"',
        'quota bad-rate: rate: rate "$1/fortnight" has unknown unit "fortnight" (use one of: min,'
        " hour, day, week, month)",
        'quota missing: capacity is required, as a string like "$10.00"',
        'quota soft: on_exceed "warn" is not supported (only "reject")',
        "quota weird: must be an object, not a number",
    ]
    assert result.problems == result.fail_closed
    defs = result.config.quotas
    assert defs["good"].invalid is None and defs["good"].capacity == 10 * 10**9
    assert (defs["good"].rate_amount, defs["good"].rate_period, defs["good"].rate_text) == (
        5 * 10**9,
        86_400,
        "$5.00/day",
    )
    assert all(defs[name].invalid for name in quotas if name != "good")
    assert (
        'quota bad-rate: rate: rate "$1/fortnight"' in result.config.warnings[0] + result.config.warnings[1]
    )


def test_a_quota_without_rate_never_refills() -> None:
    quota = good(base(quotas={"once": {"capacity": "$2.50"}})).quotas["once"]
    assert (quota.capacity, quota.rate_amount, quota.invalid) == (2_500_000_000, 0, None)


# --- providers -------------------------------------------------------------------------------


def test_provider_fields() -> None:
    provider_doc = {
        "baseurl": "http://10.0.0.5:8000/v1/",
        "apikey": "k",
        "authorization": "cf-aig-authorization",
        "models": ["a", "b/c"],
        "name": "Self hosted",
        "description": "vLLM",
        "compatibility": {"openai_chat": True, "openai_responses": True},
        "cost_basis": "openai",
        "model_cost_map": [
            {"match": "a*", "as": "gpt-4o", "adjustment": 1.1},
            {"match": "b/*", "as": "gpt-4o-mini"},
        ],
        "preference": 5,
        "disabled": True,
        "add_headers": ["X-Team: ml ", "X-Empty:"],
        "auth_mode": "passthrough",
    }
    grants = [{"src": ["*"], "app": {CAP: [{"role": "admin", "models": "local/**"}]}}]
    p = good({"providers": {"local": provider_doc}, "grants": grants}).providers["local"]
    assert p.baseurl == "http://10.0.0.5:8000/v1"
    assert (p.apikey, p.authorization, p.models, p.name, p.description) == (
        "k",
        "cf-aig-authorization",
        ("a", "b/c"),
        "Self hosted",
        "vLLM",
    )
    assert p.compatibility.as_dict() == {
        **Compatibility(openai_chat=False).as_dict(),
        "openai_chat": True,
        "openai_responses": True,
    }
    assert p.cost_basis == "openai"
    assert [(e.match, e.as_model, e.adjustment) for e in p.model_cost_map] == [
        ("a*", "gpt-4o", Decimal("1.1")),
        ("b/*", "gpt-4o-mini", Decimal(1)),
    ]
    assert (p.preference, p.disabled, p.auth_mode, p.type) == (5, True, "passthrough", "http")
    assert p.add_headers == (("X-Team", "ml"), ("X-Empty", ""))
    assert "apikey" not in repr(p) and "'k'" not in repr(p)


def test_compatibility_absent_means_chat_only_present_means_exactly_what_is_set() -> None:
    providers = {
        "plain": {"baseurl": "https://a", "models": ["m"]},
        "messages": {"baseurl": "https://b", "models": ["m"], "compatibility": {"anthropic_messages": True}},
    }
    config = good(base(providers=providers))
    assert config.providers["plain"].compatibility == Compatibility()
    assert config.providers["plain"].compatibility.openai_chat
    compat = config.providers["messages"].compatibility
    assert compat.anthropic_messages and not compat.openai_chat
    result = load(
        base(providers={"x": {"baseurl": "https://a", "models": ["m"], "compatibility": {"open_chat": True}}})
    )
    assert result.warnings == [
        'unknown config key "providers.x.compatibility.open_chat" (did you mean "openai_chat"?)',
        "provider x: compatibility enables no API; no client request can reach it",
    ]


def test_demo_provider_needs_no_baseurl_and_unknown_types_are_warned() -> None:
    config = good(base(providers={"d": {"type": "demo", "models": ["demo-fast"]}}))
    assert config.providers["d"].type == "demo" and config.providers["d"].baseurl == ""
    result = load(base(providers={"d": {"type": "dmeo", "baseurl": "https://h", "models": ["m"]}}))
    assert result.warnings == ['provider d has invalid type: dmeo (did you mean "demo"?)']


@pytest.mark.parametrize(
    ("fields", "warning"),
    [
        ({"auth_mode": "inject"}, "provider x has invalid auth_mode: inject"),
        (
            {"cost_basis": "antropic"},
            'provider x has unknown cost_basis: antropic (did you mean "anthropic"?)',
        ),
        ({"upstream": {"a": 1}}, "provider x: upstream is not supported yet; ignored"),
        (
            {"baseurl": "api.openai.com"},
            "provider x has invalid baseurl (must start with http:// or https://): api.openai.com",
        ),
        (
            {"model_cost_map": [{"match": "a["}]},
            'providers.x.model_cost_map[0]: needs both "match" and "as"; ignored',
        ),
        (
            {"model_cost_map": [{"match": "a[", "as": "b"}]},
            'providers.x.model_cost_map[0]: match "a[" is not a valid pattern; ignored',
        ),
        (
            {"model_cost_map": [{"match": "a", "as": "b", "adjustment": 0}]},
            "providers.x.model_cost_map[0]: adjustment must be more than zero; ignored",
        ),
        (
            {"add_headers": ["X-A: 1\r\nX-B: 2"]},
            'provider x: add_headers entry "X-A: 1\r\nX-B: 2" must be in "Header-Name: value" format',
        ),
        (
            {"disabled": "true"},
            "providers.x.disabled: expected a boolean (true or false), got a string; ignored",
        ),
    ],
)
def test_provider_warnings(fields: dict[str, Any], warning: str) -> None:
    provider = {"baseurl": "https://h", "models": ["m"], **fields}
    result = load(base(providers={"x": provider}))
    assert result.warnings == [warning]


def test_legacy_tailnet_field_is_accepted_and_ignored() -> None:
    result = load(base(providers={"x": {"baseurl": "https://h", "models": ["m"], "tailnet": True}}))
    assert result.warnings == [] and result.notes == ["providers.x.tailnet is a legacy field; ignored"]


# --- grants and capabilities ----------------------------------------------------------------------


def test_capability_fields() -> None:
    cap = {
        "role": "user",
        "models": "openai/gpt-*",
        "quotas": [{"bucket": "daily:<user>"}, {"bucket": "team"}],
        "add_headers": ["X-Team: ml"],
        "send_hooks": [{"name": "audit", "events": ["entire_request"], "send": ["tools", "estimated_cost"]}],
        "read_metrics": True,
        "read_pricing": True,
    }
    capability, warnings = parse_capability(cap, "here")
    assert capability == Capability(
        role="user",
        models=("openai/gpt-*",),
        quotas=(BucketRef("daily:<user>"), BucketRef("team")),
        add_headers=(("X-Team", "ml"),),
        send_hooks=(SendHook("audit", ("entire_request",), ("tools", "estimated_cost")),),
        read_metrics=True,
        extra={"read_pricing": True},
    )
    assert warnings == ['here: "send_hooks" is accepted but hooks is not implemented yet; ignored']


def test_parse_capability_is_lenient_and_does_not_expand_macros() -> None:
    capability, warnings = parse_capability(
        {"models": ["a/**", "b/*"], "add_headers": ["X: ${V}"]}, "tailnet policy"
    )
    assert capability is not None
    assert capability.models == ("a/**", "b/*")
    assert capability.add_headers == (("X", "${V}"),)
    assert warnings == []
    assert parse_capability(["not", "an", "object"], "tailnet policy") == (
        None,
        ["tailnet policy: expected an object, got an array; ignored"],
    )
    capability, warnings = parse_capability({"role": "owner", "models": 3, "set_cors": True}, "w")
    assert capability is not None and capability.role is None and capability.models == ()
    assert warnings == [
        "w: invalid role: owner",
        "w.models: expected an array, got a number; ignored",
        'w: "set_cors" is accepted but CORS is not implemented yet; ignored',
    ]


@pytest.mark.parametrize(
    "field",
    [
        "mcp_tools",
        "connectors",
        "enable_chat_ui",
        "cors_paths",
        "Access-Control-Allow-Origin",
        "filterable_headers",
        "direct_paths",
        "skills",
    ],
)
def test_unimplemented_capability_fields_are_kept_with_a_warning(field: str) -> None:
    value: Any = {
        "mcp_tools": "s/*",
        "connectors": ["a/**"],
        "enable_chat_ui": True,
        "cors_paths": ["/v1/*"],
    }.get(field, "x")
    capability, warnings = parse_capability({field: value}, "w")
    assert capability is not None and capability.extra == {field: value}
    assert len(warnings) == 1 and warnings[0].startswith(f'w: "{field}" is accepted but ')
    assert warnings[0].endswith("is not implemented yet; ignored")


def test_grants_keep_other_capabilities_and_note_dst_and_ip() -> None:
    grants = [
        {
            "src": ["group:eng", "tag:ci"],
            "dst": ["tag:ai"],
            "ip": ["*"],
            "app": {CAP: [{"role": "admin"}], "example.com/cap/policy": [{"tier": "${TIER}"}]},
        }
    ]
    result = load(base(grants=grants), {"TIER": "gold"})
    assert result.problems == []
    assert result.notes == [
        "grants[0]: dst only matters in a tailnet policy file; ignored here",
        "grants[0]: ip only matters in a tailnet policy file; ignored here",
    ]
    assert result.config is not None
    grant = result.config.grants[0]
    assert grant.src == ("group:eng", "tag:ci")
    assert grant.other_capabilities == {"example.com/cap/policy": [{"tier": "gold"}]}


def test_the_capability_name_is_configurable() -> None:
    grants = [
        {
            "src": ["*"],
            "app": {"example.com/cap/ai": [{"role": "admin"}, {"models": "**"}], CAP: [{"role": "user"}]},
        }
    ]
    config = good(base(grants=grants, server={"identity": {"capability": "example.com/cap/ai"}}))
    assert config.grants[0].capabilities == (Capability(role="admin"), Capability(models=("**",)))
    assert config.grants[0].other_capabilities == {CAP: [{"role": "user"}]}


def test_temp_grants_are_translated() -> None:
    doc = {
        "providers": {
            "anthropic": {"baseurl": "https://a", "models": ["c"]},
            "openai": {"baseurl": "https://o", "models": ["g"]},
        },
        "temp_grants": [
            {"src": ["alice@example.com"], "grants": [{"role": "admin"}]},
            {
                "src": ["*"],
                "grants": [
                    {"role": "user"},
                    {
                        "providers": [
                            {"provider": "anthropic", "model": "*"},
                            {"provider": "openai", "model": "g"},
                        ]
                    },
                ],
            },
        ],
    }
    config = good(doc)
    assert [(g.origin, g.src) for g in config.grants] == [
        ("temp_grants[0]", ("alice@example.com",)),
        ("temp_grants[1]", ("*",)),
    ]
    assert config.grants[1].capabilities == (
        Capability(role="user"),
        Capability(models=("anthropic/**",)),
        Capability(models=("openai/g",)),
    )


def test_grant_quota_refs_and_provider_globs_resolve() -> None:
    doc = base(
        providers={"aperture-a": {"baseurl": "https://a", "models": ["m"]}},
        quotas={"daily:<user>": {"capacity": "$1", "rate": "$1/day"}, "team": {"capacity": "$9"}},
        grants=[
            {
                "src": ["*"],
                "app": {
                    CAP: [
                        {"role": "admin"},
                        {
                            "models": "aperture-*/**",
                            "quotas": [{"bucket": "daily:<user>"}, {"bucket": "team"}],
                        },
                        {"models": "*/m"},
                    ]
                },
            }
        ],
    )
    good(doc)


# --- quotas and units ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nanodollars"),
    [
        ("$10.00", 10 * 10**9),
        ("$0", 0),
        ("$0.000000001", 1),
        ("$1234.56", 1_234_560_000_000),
        (" $5 ", 5 * 10**9),
    ],
)
def test_parse_dollars_is_exact(text: str, nanodollars: int) -> None:
    assert parse_dollars(text) == nanodollars


@pytest.mark.parametrize("text", ["10", "$-1", "$1,000", "$0.0000000001", "$", "$1.", "USD 5", "$1e3"])
def test_parse_dollars_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dollars(text)


def test_rates_and_formatting() -> None:
    assert parse_rate("$5.00/day") == (5 * 10**9, 86_400)
    assert parse_rate("$1/min") == (10**9, 60)
    assert parse_rate("$500.00/month") == (500 * 10**9, 30 * 86_400)
    assert parse_rate("$7/week")[1] == 7 * 86_400
    assert parse_rate("$0.25/hour") == (250_000_000, 3600)
    for bad in ("$5", "5/day", "$5/days", "$5/"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert format_dollars(10 * 10**9) == "$10.00"
    assert format_dollars(1) == "$0.000000001"
    assert format_dollars(-1_500_000_000) == "-$1.50"


def test_durations_and_sizes() -> None:
    assert parse_duration("5s") == 5
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == Decimal("0.5")
    assert parse_duration("1.5s") == Decimal("1.5")
    assert parse_duration("0") == 0
    assert parse_duration("30d", allow_days=True) == 30 * 86_400
    for bad in ("30d", "5", "s", "1h 30m", "-1s", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_byte_size(1024) == 1024
    assert parse_byte_size("32MiB") == 32 * 1024 * 1024
    assert parse_byte_size("10 MB") == 10_000_000
    assert parse_byte_size("1.5k") == 1500
    for bad_size in ("10 parsecs", "MiB", True, 1.5):
        with pytest.raises(ValueError):
            parse_byte_size(bad_size)


# --- hooks, database, exporters, mcp, connectors, flags ------------------------------------------------


def test_hooks() -> None:
    hooks = {
        "guard": {
            "url": "https://guard.example/hook",
            "apikey": "k",
            "authorization": "x-api-key",
            "timeout": "1500ms",
            "fail_policy": "fail_closed",
            "preference": 2,
        },
        "off": {"url": "http://h", "disabled": True, "timeout": "0"},
    }
    config = good(base(hooks=hooks))
    guard = config.hooks["guard"]
    assert (
        guard.url,
        guard.apikey,
        guard.authorization,
        guard.timeout,
        guard.fail_policy,
        guard.preference,
    ) == (
        "https://guard.example/hook",
        "k",
        "x-api-key",
        1.5,
        "fail_closed",
        2,
    )
    assert config.hooks["off"].disabled and config.hooks["off"].timeout == 0
    result = load(base(hooks={"h": {"url": "https://h", "timeout": "soon", "fail_policy": "open"}}))
    assert result.warnings == ["hook h has invalid timeout: soon", "hook h has invalid fail_policy: open"]


@pytest.mark.parametrize(
    ("duration", "seconds", "warning"),
    [
        ("30d", 30 * 86_400, None),
        ("720h", 720 * 3600, None),
        ("0", 0, None),
        ("", None, None),
        ("30m", 3600, 'database.retention.duration "30m" must be between 1h and 3650d, or "0"; using 3600s'),
        (
            "4000d",
            3650 * 86_400,
            'database.retention.duration "4000d" must be between 1h and 3650d, or "0"; using 315360000s',
        ),
        (
            "a month",
            None,
            'database.retention.duration: duration "a month" must look like "30d", "720h" or "0";'
            " captures are kept forever",
        ),
    ],
)
def test_retention_duration(duration: str, seconds: int | None, warning: str | None) -> None:
    result = load(base(database={"retention": {"duration": duration}}))
    assert result.config is not None
    assert result.config.database.retention.duration == seconds
    assert result.warnings == ([warning] if warning else [])


def test_database_settings() -> None:
    database = {
        "retention": {"duration": "7d", "require_export": True, "purge": ["captures", "tools"]},
        "headers": {
            "filterable": [{"name": "X-Request-Id"}, {"name": "authorization", "redact_values": True}]
        },
    }
    settings = good(base(database=database)).database
    assert settings.retention.require_export and settings.retention.purge == ("captures", "tools")
    assert settings.filterable_headers == (("x-request-id", False), ("authorization", True))
    result = load(
        base(database={"retention": {"purge": ["captures", "logs"]}, "headers": {"filterable": [{}]}})
    )
    assert result.warnings == [
        'database.retention.purge: unknown target "logs" (expected captures or tools)',
        "database.headers.filterable[0]: name is required",
    ]
    assert result.config is not None and result.config.database.retention.purge == ("captures",)


def test_exporters_mcp_connectors_and_flags_are_accepted_and_kept() -> None:
    doc = base(
        exporters={
            "s3": {"bucket_name": "b", "region": "us-east-1", "access_secret": "${S}", "limit": 50_000}
        },
        mcp={"accept_registrations": False, "servers": {"search": {"url": "http://search:8080/v1/mcp"}}},
        connectors={
            "servers": {
                "github": {
                    "protocol": "http",
                    "url": "https://api.github.com",
                    "auth": {"type": "bearer_token"},
                }
            }
        },
        flags={"connectors": {"value": True}, "chat_ui": {"value": False}},
    )
    result = load(doc, {"S": "secret"})
    assert result.config is not None
    assert result.warnings == [
        "exporters.s3: S3 export is not implemented yet; nothing will be exported",
        "mcp: MCP proxying is not implemented yet; no MCP server will be reached",
        "connectors: connectors are not implemented yet; no connector will be reached",
    ]
    assert result.notes == ["flags.connectors is deprecated and has no effect"]
    extra = result.config.extra
    assert extra["exporters"]["s3"]["limit"] == 10_000
    assert extra["exporters"]["s3"]["access_secret"] == "secret"
    assert "secret" not in repr(result.config)
    assert extra["mcp"]["servers"] == {"search": {"url": "http://search:8080/v1/mcp"}}
    assert extra["connectors"]["servers"]["github"]["protocol"] == "http"


def test_mcp_grant_patterns_are_checked_against_declared_servers() -> None:
    grant = {
        "src": ["*"],
        "app": {CAP: [{"role": "admin", "mcp_tools": "search/*"}, {"mcp_tools": "internal/*"}]},
    }
    declared = {"servers": {"search": {"url": "http://search/v1/mcp"}}}
    assert "mcp_tools pattern" not in " ".join(load(base(grants=[grant], mcp=declared)).warnings)
    registering = {"accept_registrations": True}
    assert "mcp_tools pattern" not in " ".join(load(base(grants=[grant], mcp=registering)).warnings)
    assert 'mcp_tools pattern "search/*" references server "search"' in " ".join(
        load(base(grants=[grant])).warnings
    )


def test_mcp_and_connector_problems() -> None:
    doc = base(
        mcp={"servers": {"a": {}}},
        connectors={"servers": {"my_tool": {"url": "https://x"}}},
        flags={"chat_ui": {"value": True}, "beta": {"value": True}},
    )
    result = load(doc)
    assert "mcp server a has no url configured" in result.warnings
    assert (
        'connector id "my_tool" must start with a letter and hold only letters and digits' in result.warnings
    )
    assert "flags.chat_ui: the chat UI is not implemented yet" in result.warnings
    assert 'unknown config key "flags.beta"' in result.warnings
    assert "no providers or mcp servers defined" not in " ".join(
        load({"grants": [ADMIN_GRANT], "mcp": {"servers": {"a": {"url": "http://a"}}}}).warnings
    )


# --- server -------------------------------------------------------------------------------------------


def test_server_defaults_and_values() -> None:
    assert good(base()).server.listen == ("127.0.0.1:8080",)
    server = {
        "listen": ["0.0.0.0:80", "[::1]:8443", "unix:/run/tailgate.sock", ":9000"],
        "database": "postgresql://tailgate@db/tailgate",
        "max_body_bytes": "8MiB",
        "upstream_connect_timeout": "2.5s",
        "upstream_timeout": 30,
        "workers": 4,
        "public_url": "http://ai/",
        "identity": {
            "sources": ["keys", "whois"],
            "tailscale_socket": "/var/run/tailscale/tailscaled.sock",
            "whois_timeout": "500ms",
            "whois_cache_ttl": 0,
            "serve_headers": "unix",
        },
    }
    settings = good(base(server=server)).server
    assert settings.listen == ("0.0.0.0:80", "[::1]:8443", "unix:/run/tailgate.sock", ":9000")
    assert settings.database == "postgresql://tailgate@db/tailgate"
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert (settings.upstream_connect_timeout, settings.upstream_timeout, settings.workers) == (2.5, 30.0, 4)
    assert settings.public_url == "http://ai"
    identity = settings.identity
    assert identity.sources == ("keys", "whois")
    assert identity.tailscale_socket == "/var/run/tailscale/tailscaled.sock"
    assert (identity.whois_timeout, identity.whois_cache_ttl, identity.serve_headers) == (0.5, 0.0, "unix")
    assert good(
        base(server={"listen": "127.0.0.1:0", "database": "sqlite:///var/lib/t.db"})
    ).server.listen == ("127.0.0.1:0",)


@pytest.mark.parametrize(
    ("server", "error"),
    [
        ({"listen": "8080"}, 'server.listen: "8080" needs a host, as in 127.0.0.1:8080'),
        ({"listen": ["localhost:http"]}, 'server.listen: "localhost:http" has an invalid port'),
        (
            {"listen": "::1:80"},
            'server.listen: "::1:80" has an invalid host (IPv6 addresses go in brackets: [::1]:8080)',
        ),
        ({"listen": "unix:"}, "server.listen: unix: needs a socket path"),
        ({"listen": []}, "server.listen: needs at least one address"),
        ({"listen": 8080}, "server.listen: expected a string or an array of strings"),
        (
            {"database": "mysql://db/x"},
            'server.database: unsupported database scheme "mysql" (use a file path, sqlite:///path'
            " or postgresql://…)",
        ),
        (
            {"database": "sqlite://relative.db"},
            "server.database: use sqlite:///absolute/path or a plain path",
        ),
    ],
)
def test_server_errors(server: dict[str, Any], error: str) -> None:
    result = load(base(server=server))
    assert result.config is None and result.errors == [error]


@pytest.mark.parametrize(
    ("server", "warning"),
    [
        (
            {"max_body_bytes": "lots"},
            'server.max_body_bytes: size "lots" must be a number of bytes or look like "32MiB";'
            " using the default",
        ),
        ({"max_body_bytes": 0}, "server.max_body_bytes must be more than zero; using the default"),
        (
            {"upstream_timeout": "forever"},
            'server.upstream_timeout: duration "forever" must look like "30s", "1m30s", "500ms" or'
            ' "0"; using the default',
        ),
        ({"workers": -1}, "server.workers must be 0 (one per CPU core) or more; using the default"),
        (
            {"public_url": "ai.example"},
            'server.public_url "ai.example" must start with http:// or https://; ignored',
        ),
        (
            {"identity": {"sources": ["whois", "key"]}},
            'server.identity.sources: unknown identity source "key" (did you mean "keys"?)'
            " (expected: whois, serve, keys, loopback)",
        ),
        (
            {"identity": {"serve_headers": "yes"}},
            "server.identity.serve_headers must be one of off, unix, loopback, not: yes",
        ),
        (
            {"identity": {"whois_timeout": -1}},
            "server.identity.whois_timeout must be more than zero; using the default",
        ),
        ({"listn": "x"}, 'unknown config key "server.listn" (did you mean "listen"?)'),
    ],
)
def test_server_warnings(server: dict[str, Any], warning: str) -> None:
    result = load(base(server=server))
    assert result.config is not None
    assert result.warnings == [warning]
    assert result.config.server.max_body_bytes == 32 * 1024 * 1024


# --- save-path strictness ---------------------------------------------------------------------------------


def test_validate_for_save_counts_every_warning_and_refuses_empty() -> None:
    assert validate_for_save(json.dumps(base()), environ={}, saver=None, saver_is_admin_now=False) == []
    assert validate_for_save("", environ={}, saver=None, saver_is_admin_now=False) == [
        "config must not be empty"
    ]
    problems = validate_for_save(
        json.dumps({"providers": PROVIDERS}), environ={}, saver=None, saver_is_admin_now=False
    )
    assert any("no grants" in p for p in problems)
    bad_quota = json.dumps(base(quotas={"q": {"capacity": "1"}}))
    assert validate_for_save(bad_quota, environ={}, saver=None, saver_is_admin_now=False) == [
        'quota q: capacity: amount "1" must look like "$10.00"'
    ]


def test_validate_for_save_refuses_removing_the_savers_own_admin_role() -> None:
    def config_with_admin(src: list[str]) -> str:
        return json.dumps(base(grants=[{"src": src, "app": {CAP: [{"role": "admin"}, {"models": "**"}]}}]))

    alice = "alice@example.com"
    assert (
        validate_for_save(config_with_admin([alice]), environ={}, saver=alice, saver_is_admin_now=True) == []
    )
    assert validate_for_save(config_with_admin(["*"]), environ={}, saver=alice, saver_is_admin_now=True) == []
    refused = validate_for_save(
        config_with_admin(["bob@example.com"]), environ={}, saver=alice, saver_is_admin_now=True
    )
    assert refused == [f"this config would remove your own admin role ({alice}); refusing to save it"]
    assert (
        validate_for_save(
            config_with_admin(["bob@example.com"]), environ={}, saver=alice, saver_is_admin_now=False
        )
        == []
    )
    seen: list[Config] = []

    def evaluator(config: Config) -> bool:
        seen.append(config)
        return True

    text = config_with_admin(["group:eng"])
    assert (
        validate_for_save(text, environ={}, saver=alice, saver_is_admin_now=True, grants_evaluator=evaluator)
        == []
    )
    assert len(seen) == 1 and seen[0].grants[0].src == ("group:eng",)


@pytest.mark.parametrize(
    ("entry", "principal", "tags", "groups", "matches"),
    [
        ("*", "alice@example.com", (), (), True),
        ("*", "tag:ci", ("tag:ci",), (), True),
        ("alice@example.com", "alice@example.com", (), (), True),
        ("alice@example.com", "bob@example.com", (), (), False),
        ("group:eng", "alice@example.com", (), ("group:eng",), True),
        ("group:eng", "alice@example.com", (), ("group:ops",), False),
        ("eng@example.com", "alice@example.com", (), ("eng@example.com",), True),
        ("tag:ci,tag:prod", "tag:ci,tag:prod", ("tag:prod", "tag:ci"), (), True),
        ("tag:ci", "tag:ci,tag:prod", ("tag:ci", "tag:prod"), (), False),
        ("tag:ci", "tag:ci", (), (), True),
        ("(loopback)", "(loopback)", (), (), True),
        ("(loopback)", "alice@example.com", (), (), False),
    ],
)
def test_src_matches(
    entry: str, principal: str, tags: tuple[str, ...], groups: tuple[str, ...], matches: bool
) -> None:
    assert src_matches(entry, principal, tags, groups) is matches


# --- files, defaults, docs ---------------------------------------------------------------------------


def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "tailgate.hujson"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(base()).encode())
    result = load_config_file(path, {})
    assert result.config is not None and result.config.source_path == str(path)
    assert not result.config.source_text.startswith("\ufeff")
    missing = load_config_file(tmp_path / "missing.hujson", {})
    assert missing.config is None and missing.errors[0].startswith(
        f"cannot read config file {tmp_path}/missing.hujson"
    )
    path.write_bytes(b'{"a": "\xff"}')
    assert load_config_file(path, {}).errors == [f"config file {path} is not UTF-8 (byte 7)"]


def test_demo_config_loads_cleanly() -> None:
    result = load_config(DEMO_CONFIG, environ={})
    assert result.problems == [] and result.notes == []
    config = result.config
    assert config is not None
    demo = config.providers["demo"]
    assert demo.type == "demo" and demo.name == "Demo provider (no upstream, for trials)"
    assert demo.models == ("demo-fast", "demo-smart")
    flags = demo.compatibility
    assert (
        flags.openai_chat
        and flags.openai_responses
        and flags.anthropic_messages
        and flags.gemini_generate_content
    )
    assert demo.cost_basis == "openai"
    assert [(e.match, e.as_model) for e in demo.model_cost_map] == [
        ("demo-fast", "gpt-4o-mini"),
        ("demo-smart", "gpt-4o"),
    ]
    (grant,) = config.grants
    assert grant.src == ("(loopback)",)
    assert grant.capabilities == (
        Capability(role="admin"),
        Capability(models=("**",), quotas=(BucketRef("demo:<user>"),)),
    )
    quota = config.quotas["demo:<user>"]
    assert (quota.capacity, quota.rate_amount, quota.rate_period) == (5 * 10**9, 5 * 10**9, 86_400)


def test_new_instance_config_loads() -> None:
    result = load_config(NEW_INSTANCE_CONFIG, environ={})
    assert result.errors == [] and result.fail_closed == []
    assert result.warnings == [
        'grants[3].app[tailscale.com/cap/aperture][0]: "send_hooks" is accepted but hooks is not'
        " implemented yet; ignored"
    ]
    config = result.config
    assert config is not None
    assert set(config.providers) == {"openai", "anthropic"}
    assert config.grants[0].src == ("example-user@example.com", "*")
    assert config.grants[3].src == ()
    assert config.hooks["oso"].url == "https://api.osohq.com/api/agents/v1/model-request"


def test_the_documentation_mentions_every_accepted_key_and_value() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"`([^`\n]+)`", doc))
    names = {name for keys in ACCEPTED_KEYS.values() for name in keys}
    names |= {value for values in ACCEPTED_VALUES.values() for value in values}
    missing = sorted(
        name
        for name in names
        if not any(name == m or f'"{name}"' in m or m.endswith(f".{name}") for m in mentioned)
    )
    assert missing == []
