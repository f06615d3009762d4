"""The grants engine: src forms, model globs, roles, union with tailnet capabilities, errors."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tailgate.config.fields import Problems, Reader
from tailgate.config.grants import read_temp_grants
from tailgate.config.model import BucketRef, Capability, Config, Grant, SendHook
from tailgate.errors import AccessDenied
from tailgate.grants import GrantTable, glob_matches
from tailgate.identity import LOOPBACK_IDENTITY, Identity, IdentityKind, IdentitySource

ALICE = Identity("alice@example.com", IdentityKind.USER, IdentitySource.WHOIS, groups=("group:eng",))
BOB = Identity("bob@example.com", IdentityKind.USER, IdentitySource.WHOIS)
SCIM = Identity("sam@example.com", IdentityKind.USER, IdentitySource.WHOIS, groups=("eng-team@example.com",))
CI = Identity("tag:ci,tag:prod", IdentityKind.TAGGED, IdentitySource.WHOIS, tags=("tag:ci", "tag:prod"))
SOLO = Identity("tag:ci", IdentityKind.TAGGED, IdentitySource.WHOIS, tags=("tag:ci",))
KEYED = Identity("build-bot", IdentityKind.KEY, IdentitySource.KEY, key_id="k1")

USER = Capability(role="user")
ADMIN = Capability(role="admin")
ALL_MODELS = Capability(models=("**",))


def grant(src: str | tuple[str, ...], *caps: Capability, origin: str = "grants[0]") -> Grant:
    return Grant(src=(src,) if isinstance(src, str) else src, capabilities=caps, origin=origin)


def table(*grants: Grant) -> GrantTable:
    return GrantTable(Config(grants=tuple(grants)))


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("**", "openai/gpt-4o", True),
        ("**", "openrouter/qwen/qwen3-235b", True),
        ("anthropic/**", "anthropic/claude-sonnet-4-6", True),
        ("anthropic/**", "openai/gpt-4o", False),
        ("openai/gpt-5", "openai/gpt-5", True),
        ("openai/gpt-5", "openai/gpt-5-mini", False),
        ("*/claude-sonnet*", "anthropic/claude-sonnet-4-6", True),
        ("*/claude-sonnet*", "bedrock/claude-sonnet-4-6", True),
        ("*/claude-sonnet*", "openrouter/anthropic/claude-sonnet-4", False),
        ("aperture-*/**", "aperture-eu/gpt-4o", True),
        ("aperture-*/**", "aperture/gpt-4o", False),
        ("openai/gpt-4*", "openai/gpt-4.1-mini", True),
        ("openai/gpt-4*", "openai/gpt-5", False),
        ("openrouter/*", "openrouter/qwen/qwen3", False),
        ("openrouter/**", "openrouter/qwen/qwen3", True),
        ("openrouter/*/*", "openrouter/qwen/qwen3", True),
        ("**/qwen3", "openrouter/qwen/qwen3", True),
        ("openrouter/**/qwen3", "openrouter/qwen3", True),
        ("openai/gpt-4?", "openai/gpt-4o", False),
        ("openai/gpt-4[o]", "openai/gpt-4o", False),
        ("openai/gpt.4o", "openai/gpt-4o", False),
    ],
)
def test_model_globs(pattern: str, name: str, expected: bool) -> None:
    assert glob_matches(pattern, name) is expected


@pytest.mark.parametrize(
    ("src", "identity", "expected"),
    [
        ("*", ALICE, True),
        ("*", CI, True),
        ("*", LOOPBACK_IDENTITY, True),
        ("*", KEYED, True),
        ("alice@example.com", ALICE, True),
        ("alice@example.com", BOB, False),
        ("group:eng", ALICE, True),
        ("group:eng", BOB, False),
        ("eng-team@example.com", SCIM, True),
        ("tag:ci,tag:prod", CI, True),
        ("tag:prod,tag:ci", CI, False),
        ("tag:ci", CI, False),
        ("tag:ci", SOLO, True),
        ("tagged-devices", CI, False),
        ("(loopback)", LOOPBACK_IDENTITY, True),
        ("(loopback)", ALICE, False),
        ("build-bot", KEYED, True),
        ("build-bot", ALICE, False),
    ],
)
def test_src_forms(src: str, identity: Identity, expected: bool) -> None:
    decision = table(grant(src, USER, ALL_MODELS)).decide(identity, "openai", "gpt-4o")
    assert decision.allowed is expected
    assert decision.reason == (
        'granted by grants[0] (models "**")' if expected else "access denied: no role granted"
    )


@pytest.mark.parametrize(
    ("grants", "role"),
    [
        ((), None),
        ((grant("*", ALL_MODELS),), None),
        ((grant("*", USER),), "user"),
        ((grant("*", USER), grant("alice@example.com", ADMIN)), "admin"),
        ((grant("*", ADMIN), grant("alice@example.com", USER)), "admin"),
        ((grant("bob@example.com", ADMIN), grant("*", USER)), "user"),
        ((grant("*", Capability(role="user", models=("openai/*",))),), "user"),
    ],
)
def test_highest_role_wins(grants: tuple[Grant, ...], role: str | None) -> None:
    assert table(*grants).role_of(ALICE) == role


def test_no_role_denies_even_with_model_grants() -> None:
    decision = table(grant("*", ALL_MODELS)).decide(ALICE, "openai", "gpt-4o")
    assert not decision.allowed
    assert decision.role is None
    with pytest.raises(AccessDenied, match=r"^access denied: no role granted$"):
        decision.check()


def test_model_not_granted_names_model_and_caller() -> None:
    grants = table(grant("*", USER, Capability(models=("anthropic/**",))))
    decision = grants.decide(ALICE, "openai", "gpt-5")
    assert not decision.allowed
    assert decision.role == "user"
    assert decision.reason == 'access denied: model "openai/gpt-5" is not granted to alice@example.com'
    tagged = grants.decide(CI, "openai", "gpt-5")
    assert tagged.reason == 'access denied: model "openai/gpt-5" is not granted to tag:ci,tag:prod'


def test_union_of_grants_collects_quotas_headers_hooks_of_matching_models() -> None:
    hook = SendHook("oso", ("entire_request",), ("tools",))
    grants = table(
        grant("*", USER, origin="grants[0]"),
        grant(
            "group:eng",
            Capability(models=("anthropic/**",), quotas=(BucketRef("daily:<user>"),)),
            Capability(models=("*/claude-opus*",), quotas=(BucketRef("opus:<user>"),)),
            Capability(models=("openai/**",), quotas=(BucketRef("openai-only"),)),
            origin="grants[1]",
        ),
        grant(
            "alice@example.com",
            Capability(quotas=(BucketRef("team"), BucketRef("daily:<user>")), send_hooks=(hook,)),
            Capability(models=("anthropic/*",), add_headers=(("X-Team", "eng"),)),
            origin="grants[2]",
        ),
    )
    opus = grants.decide(ALICE, "anthropic", "claude-opus-4-6")
    assert opus.allowed
    assert opus.quotas == (BucketRef("daily:<user>"), BucketRef("opus:<user>"), BucketRef("team"))
    assert opus.add_headers == (("X-Team", "eng"),)
    assert opus.send_hooks == (hook,)
    assert [m.origin for m in opus.matched] == [
        "grants[0]",
        "grants[1]",
        "grants[1]",
        "grants[2]",
        "grants[2]",
    ]
    sonnet = grants.decide(ALICE, "anthropic", "claude-sonnet-4-6")
    assert sonnet.quotas == (BucketRef("daily:<user>"), BucketRef("team"))
    # A narrow grant cannot cancel a broad one: bob has the role but no model grant.
    assert not grants.decide(BOB, "anthropic", "claude-sonnet-4-6").allowed


def test_floating_capability_applies_to_every_model_but_grants_none() -> None:
    floating = Capability(quotas=(BucketRef("everything"),), add_headers=(("X-All", "1"),))
    grants = table(
        grant("*", USER, floating), grant("*", Capability(models=("openai/gpt-4o",)), origin="grants[1]")
    )
    assert grants.decide(ALICE, "openai", "gpt-4o").quotas == (BucketRef("everything"),)
    assert grants.decide(ALICE, "openai", "gpt-4o").add_headers == (("X-All", "1"),)
    denied = grants.decide(ALICE, "openai", "gpt-5")
    assert not denied.allowed
    assert [m.capability for m in denied.matched] == [USER, floating]


def test_tailnet_capabilities_merge_with_config_grants() -> None:
    grants = table(grant("*", USER, Capability(models=("openai/**",))))
    caps: tuple[dict[str, Any], ...] = (
        {"role": "admin"},
        {"models": "anthropic/**", "quotas": [{"bucket": "daily:<user>"}]},
    )
    alice = Identity("alice@example.com", IdentityKind.USER, IdentitySource.WHOIS, capabilities=caps)
    assert grants.role_of(alice) == "admin"
    assert grants.role_of(ALICE) == "user"
    decision = grants.decide(alice, "anthropic", "claude-sonnet-4-6")
    assert decision.allowed
    assert decision.quotas == (BucketRef("daily:<user>"),)
    assert decision.reason == 'granted by tailnet policy (models "anthropic/**")'
    assert grants.decide(alice, "openai", "gpt-4o").allowed
    assert not grants.decide(ALICE, "anthropic", "claude-sonnet-4-6").allowed


def test_tailnet_capabilities_alone_suffice() -> None:
    caps = ({"role": "user", "models": "openai/gpt-4.1-mini"},)
    ci = Identity("tag:ci", IdentityKind.TAGGED, IdentitySource.WHOIS, tags=("tag:ci",), capabilities=caps)
    grants = table()
    assert grants.decide(ci, "openai", "gpt-4.1-mini").allowed
    assert not grants.decide(ci, "openai", "gpt-4.1").allowed


def test_invalid_tailnet_capability_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caps = ({"role": "superuser"}, {"role": "user"}, {"models": "**"})
    caller = Identity("alice@example.com", IdentityKind.USER, IdentitySource.WHOIS, capabilities=caps)
    grants = table()
    assert grants.role_of(caller) == "user"
    assert grants.decide(caller, "openai", "gpt-4o").allowed
    assert "invalid role" in caplog.text


def test_temp_grants_translate_into_grants() -> None:
    problems = Problems()
    legacy = read_temp_grants(
        Reader(None, problems),
        [
            {"src": ["alice@example.com"], "grants": [{"role": "admin"}]},
            {
                "src": ["*"],
                "grants": [
                    {"role": "user"},
                    {
                        "providers": [
                            {"provider": "anthropic", "model": "*"},
                            {"provider": "openai", "model": "gpt-4o"},
                        ]
                    },
                ],
            },
        ],
    )
    assert problems.warnings == []
    grants = GrantTable(Config(grants=tuple(legacy)))
    assert grants.role_of(ALICE) == "admin"
    assert grants.role_of(BOB) == "user"
    allowed = grants.decide(BOB, "anthropic", "claude-haiku-4-5")
    assert allowed.allowed
    assert allowed.reason == 'granted by temp_grants[1] (models "anthropic/**")'
    assert grants.decide(BOB, "openai", "gpt-4o").allowed
    assert not grants.decide(BOB, "openai", "gpt-4o-mini").allowed


def test_visible_models_filters_candidates() -> None:
    grants = table(
        grant("*", USER, Capability(models=("openai/gpt-4*",)), Capability(models=("anthropic/**",)))
    )
    candidates = [("openai", "gpt-4o"), ("openai", "gpt-5"), ("anthropic", "claude-sonnet-4-6")]
    assert grants.visible_models(ALICE, candidates) == [
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-6"),
    ]
    assert table(grant("*", ALL_MODELS)).visible_models(ALICE, candidates) == []


def test_read_metrics_needs_admin() -> None:
    metrics = Capability(read_metrics=True)
    assert table(grant("*", ADMIN, metrics)).read_metrics(ALICE)
    assert not table(grant("*", USER, metrics)).read_metrics(ALICE)
    assert not table(grant("*", ADMIN)).read_metrics(ALICE)


def test_explain_says_which_grants_matched_and_why() -> None:
    grants = table(
        grant("bob@example.com", ADMIN, origin="grants[0]"),
        grant(
            ("group:eng", "*"),
            USER,
            Capability(models=("openai/*",), quotas=(BucketRef("q"),)),
            origin="grants[1]",
        ),
    )
    text = grants.explain(ALICE, "openai", "gpt-4o")
    assert text.splitlines() == [
        "caller: alice@example.com (user, via whois; groups group:eng)",
        "  grants[0]: src [bob@example.com] does not match",
        '  grants[1]: src "group:eng" matches',
        "    role user; floating (any model)",
        "    models openai/* (matches openai/gpt-4o); quotas q",
        "role: user",
        'openai/gpt-4o: allowed: granted by grants[1] (models "openai/*")',
        "quotas: q",
    ]
    denied = grants.explain(ALICE, "anthropic", "claude-opus-4-6")
    assert denied.splitlines()[-1] == (
        'anthropic/claude-opus-4-6: denied: access denied: model "anthropic/claude-opus-4-6" '
        "is not granted to alice@example.com"
    )


def test_decisions_are_memoised_and_distinguish_callers() -> None:
    grants = table(grant("alice@example.com", USER, ALL_MODELS))
    first = grants.decide(ALICE, "openai", "gpt-4o")
    assert grants.decide(ALICE, "openai", "gpt-4o") is first
    assert not grants.decide(BOB, "openai", "gpt-4o").allowed
    renamed = Identity("alice@example.com", IdentityKind.USER, IdentitySource.SERVE, groups=("group:eng",))
    assert grants.decide(renamed, "openai", "gpt-4o") is first
    with_caps = Identity(
        "bob@example.com", IdentityKind.USER, IdentitySource.WHOIS, capabilities=({"role": "user"},)
    )
    assert grants.role_of(with_caps) == "user"
    assert grants.role_of(BOB) is None


def test_cached_decision_is_a_dict_lookup() -> None:
    grants = table(
        *(grant(f"user{i}@example.com", USER, ALL_MODELS, origin=f"grants[{i}]") for i in range(50))
    )
    grants = table(*grants._grants, grant("*", USER, Capability(models=("openai/**",)), origin="grants[50]"))
    caller = Identity(
        "alice@example.com",
        IdentityKind.USER,
        IdentitySource.WHOIS,
        capabilities=({"role": "user"}, {"models": "anthropic/**"}),
    )
    grants.decide(caller, "openai", "gpt-4o")
    rounds = 20_000
    start = time.perf_counter()
    for _ in range(rounds):
        grants.decide(caller, "openai", "gpt-4o")
    per_call = (time.perf_counter() - start) / rounds
    assert per_call < 50e-6  # generous bound for slow machines; measured figures are in the report
