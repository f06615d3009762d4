"""``GET /metrics``: counted through a real gateway, checked with Prometheus's own text parser."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tailgate.metrics import (
    LATENCY_BOUNDS_NS,
    OVERHEAD_BOUNDS_NS,
    Histogram,
    Metrics,
    escape_label,
    register_metrics,
    seconds,
)
from tailgate.record import Outcome, Record
from tailgate.usage import Usage
from tests.harness import RunningGateway, running_gateway
from tests.mock_upstream import MockUpstream

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_config(mock_url: str, capability: str = '{"role": "admin", "read_metrics": true}') -> str:
    return f"""{{
  "providers": {{
    "openai": {{"baseurl": "{mock_url}", "apikey": "sk-openai-SECRET", "models": ["gpt-4o-mini"]}},
  }},
  "grants": [
    {{"src": ["(loopback)"],
      "app": {{"tailscale.com/cap/aperture": [{capability}, {{"models": "**"}}]}}}},
  ],
}}"""


def with_metrics(gw: RunningGateway) -> RunningGateway:
    """Mount ``/metrics`` unless the gateway already does (mounting twice would count twice)."""
    if gw.gateway.router.lookup("/metrics") is None:
        gw.gateway.mount(register_metrics)
    return gw


@pytest.fixture
def gw(mock_upstream: MockUpstream, tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(metrics_config(mock_upstream.base_url), tmp_path) as running:
        yield with_metrics(running)


def call(
    gw: RunningGateway, method: str, path: str, body: dict[str, Any] | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    payload = orjson.dumps(body) if body is not None else None
    conn.request(method, path, body=payload, headers={"content-type": "application/json", **headers})
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return result


def chat(gw: RunningGateway, *, stream: bool = False, model: str = "gpt-4o-mini", **headers: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    status, _, _ = call(gw, "POST", "/v1/chat/completions", body, **headers)
    return status


def scrape(gw: RunningGateway) -> tuple[str, Samples, dict[str, str]]:
    """The text, every sample by (name, labels), and each family's type, parsed by prometheus_client."""
    gw.flush()
    status, headers, body = call(gw, "GET", "/metrics")
    assert status == 200, body
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


OPENAI = {"provider": "openai", "model": "gpt-4o-mini"}


def test_requests_tokens_cost_and_latencies_are_counted(gw: RunningGateway) -> None:
    assert chat(gw) == 200
    assert chat(gw, stream=True) == 200
    records = gw.records()
    assert len(records) == 2 and all(r.usage is not None and r.cost_nd for r in records)

    _, samples, types = scrape(gw)
    assert value(samples, "tailgate_requests_total", **OPENAI, status="200", outcome="ok") == 2
    for kind, attr in (("input", "input_tokens"), ("output", "output_tokens")):
        expected = sum(getattr(r.usage, attr) for r in records)
        assert expected > 0
        assert value(samples, "tailgate_tokens_total", **OPENAI, kind=kind) == expected
    assert value(samples, "tailgate_cost_nanodollars_total", **OPENAI) == sum(r.cost_nd or 0 for r in records)
    assert value(samples, "tailgate_errors_total", **OPENAI, outcome="ok") == 0

    for name in ("tailgate_upstream_latency_seconds", "tailgate_time_to_first_byte_seconds"):
        assert types[name] == "histogram"
        assert value(samples, f"{name}_count", **OPENAI) == 2
        assert value(samples, f"{name}_bucket", **OPENAI, le="+Inf") == 2
        assert value(samples, f"{name}_sum", **OPENAI) > 0
    assert value(samples, "tailgate_gateway_overhead_seconds_count") == 2
    assert 0 < value(samples, "tailgate_gateway_overhead_seconds_sum") < 1
    assert value(samples, "tailgate_records_written_total") == 2
    assert value(samples, "tailgate_build_info") == 1
    assert value(samples, "process_resident_memory_bytes") > 1_000_000


def test_refused_and_failed_requests_count_as_errors(gw: RunningGateway) -> None:
    assert chat(gw, model="no-such-model") == 404
    assert chat(gw, **{"x-mock-scenario": "error=500"}) == 500
    _, samples, _ = scrape(gw)
    # A request that found no route is counted without provider or model: labels stay bounded.
    assert (
        value(samples, "tailgate_requests_total", provider="", model="", status="404", outcome="invalid") == 1
    )
    assert value(samples, "tailgate_errors_total", provider="", model="", outcome="invalid") == 1
    assert value(samples, "tailgate_requests_total", **OPENAI, status="500", outcome="upstream_error") == 1
    assert value(samples, "tailgate_errors_total", **OPENAI, outcome="upstream_error") == 1
    assert value(samples, "tailgate_upstream_latency_seconds_count", **OPENAI) == 1
    assert value(samples, "tailgate_gateway_overhead_seconds_count") == 1  # only the forwarded one


def test_histogram_buckets_are_cumulative_and_end_in_the_count(gw: RunningGateway) -> None:
    for _ in range(3):
        assert chat(gw) == 200
    text, samples, _ = scrape(gw)
    buckets = [
        (labels, v)
        for (name, labels), v in samples.items()
        if name == "tailgate_upstream_latency_seconds_bucket"
    ]
    bounds = [dict(labels)["le"] for labels, _ in buckets]
    assert bounds == [seconds(b) for b in LATENCY_BOUNDS_NS] + ["+Inf"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == 3
    # Each family is introduced by HELP then TYPE, once.
    assert text.count("# TYPE tailgate_upstream_latency_seconds histogram\n") == 1
    help_at = text.index("# HELP tailgate_upstream_latency_seconds ")
    assert (
        help_at
        < text.index("# TYPE tailgate_upstream_latency_seconds")
        < text.index("tailgate_upstream_latency_seconds_bucket{")
    )


@pytest.mark.parametrize(
    "capability",
    ['{"role": "admin"}', '{"role": "user", "read_metrics": true}'],
    ids=["admin-without-read_metrics", "user-with-read_metrics"],
)
def test_metrics_need_an_admin_with_read_metrics(
    mock_upstream: MockUpstream, tmp_path: Path, capability: str
) -> None:
    with running_gateway(metrics_config(mock_upstream.base_url, capability), tmp_path) as gw:
        with_metrics(gw)
        status, headers, body = call(gw, "GET", "/metrics")
        assert status == 403
        assert headers["content-type"] == "application/json"
        assert (
            orjson.loads(body)["error"]["message"]
            == "access denied: /metrics needs a grant with read_metrics"
        )
        assert b"tailgate_requests_total" not in body
        assert chat(gw) == 200  # the caller may still use models


def test_a_config_reload_can_grant_read_metrics(mock_upstream: MockUpstream, tmp_path: Path) -> None:
    from tests.harness import config_from

    with running_gateway(metrics_config(mock_upstream.base_url, '{"role": "admin"}'), tmp_path) as gw:
        with_metrics(gw)
        assert call(gw, "GET", "/metrics")[0] == 403
        gw.apply(config_from(metrics_config(mock_upstream.base_url)))
        gw.call(_noop())  # the reload ran on the loop before this returns
        assert call(gw, "GET", "/metrics")[0] == 200
        assert call(gw, "POST", "/metrics")[0] == 405


async def _noop() -> None:
    return None


# -- the exposition format and the counters, without a gateway --------------------------------------


def exchange(provider: str = "p", model: str = "m", **times: int) -> Any:
    route = SimpleNamespace(provider=SimpleNamespace(id=provider), model=model)
    defaults = {"started_ns": 1_000, "gateway_ns": 100_000, "first_byte_ns": 2_001_000, "ended_ns": 5_101_000}
    return SimpleNamespace(route=route, **{**defaults, **times})


def record(
    status: int = 200, outcome: Outcome = Outcome.OK, usage: Usage | None = None, cost: int | None = None
) -> Record:
    return Record(id="r", ts_ms=0, principal="x", status=status, outcome=outcome, usage=usage, cost_nd=cost)


def test_label_values_are_escaped_and_parse_back() -> None:
    metrics = Metrics()
    awkward = 'quote " backslash \\ newline \n end'
    metrics.observe(exchange(provider="p", model=awkward), record(usage=Usage(input_tokens=3), cost=7))
    assert escape_label(awkward) == 'quote \\" backslash \\\\ newline \\n end'
    text = metrics.render().decode()
    assert escape_label(awkward) in text
    parsed = {
        (s.name, s.labels.get("model")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert parsed[("tailgate_tokens_total", awkward)] == 3
    assert parsed[("tailgate_cost_nanodollars_total", awkward)] == 7


def test_usage_without_a_price_counts_as_unpriced_not_free() -> None:
    metrics = Metrics()
    metrics.observe(exchange(), record(usage=Usage(input_tokens=5, output_tokens=2), cost=None))
    assert metrics.unpriced == {("p", "m"): 1}
    assert metrics.cost_nd == {}
    assert metrics.tokens == {("p", "m", "input"): 5, ("p", "m", "output"): 2}


def test_histogram_le_includes_the_bound_and_sums_exactly() -> None:
    histogram = Histogram(OVERHEAD_BOUNDS_NS)
    histogram.observe(OVERHEAD_BOUNDS_NS[0])  # exactly on the first bound: counted there
    histogram.observe(OVERHEAD_BOUNDS_NS[0] + 1)
    histogram.observe(10 * 1_000_000_000)  # beyond every bound: +Inf only
    assert histogram.counts[0] == 1 and histogram.counts[1] == 1 and histogram.counts[-1] == 1
    assert seconds(histogram.sum_ns) == "10.000050001"
    assert seconds(1_500_000) == "0.0015" and seconds(0) == "0" and seconds(2_000_000_000) == "2"


def test_observing_from_two_threads_loses_nothing() -> None:
    metrics = Metrics()
    rounds = 20_000
    usage = Usage(input_tokens=1, output_tokens=1)

    def work() -> None:
        for _ in range(rounds):
            metrics.observe(exchange(), record(usage=usage, cost=1))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in range(50):  # scrapes while the threads count
        metrics.render()
    for thread in threads:
        thread.join(30)
    assert metrics.requests[("p", "m", "200", "ok")] == 2 * rounds
    assert metrics.cost_nd[("p", "m")] == 2 * rounds
    assert sum(metrics.overhead.counts) == 2 * rounds
    assert metrics.overhead.sum_ns == 2 * rounds * 100_000
