"""The request path leaves no reference cycles, on success and on every failure.

The worker runs its cycle collector rarely (``tailgate/garbage.py``): a pass holds up every
stream for as long as it takes. That is only safe while requests, streams and connections are
freed by reference counting alone, which this test checks across the paths a request can take.
"""

from __future__ import annotations

import gc
import http.client
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.harness import gateway_object_kind, running_gateway
from tests.mock_upstream import MockUpstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}


def _config(mock_url: str, dead_url: str) -> str:
    return f"""{{
  "providers": {{
    "openai": {{"baseurl": "{mock_url}", "apikey": "sk-openai-SECRET", "models": ["gpt-4o-mini"],
                "compatibility": {{"openai_chat": true, "openai_responses": true}}}},
    "anthropic": {{"baseurl": "{mock_url}", "apikey": "sk-ant-SECRET", "authorization": "x-api-key",
                   "models": ["claude-haiku-4-5"], "compatibility": {{"anthropic_messages": true}}}},
    "gemini": {{"baseurl": "{mock_url}", "apikey": "AIza-SECRET", "authorization": "x-goog-api-key",
                "models": ["gemini-2.5-flash"], "compatibility": {{"gemini_generate_content": true}}}},
    "dead": {{"baseurl": "{dead_url}", "apikey": "sk-dead", "models": ["dead-model"]}},
  }},
  "grants": [
    {{"src": ["(loopback)"], "app": {{"tailscale.com/cap/aperture": [
      {{"role": "admin"}},
      {{"models": "openai/**", "quotas": [{{"bucket": "spend:<user>"}}]}},
      {{"models": "anthropic/**"}}, {{"models": "gemini/**"}}, {{"models": "dead/**"}},
    ]}}}},
  ],
  "quotas": {{"spend:<user>": {{"capacity": "$1000.00", "rate": "$1000.00/day"}},
              "empty": {{"capacity": "$0.000001", "rate": "$0.000001/day"}}}},
  "server": {{"upstream_timeout": 0.3}},
}}"""


def _post(port: int, path: str, body: bytes | dict[str, Any], scenario: str = "") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"content-type": "application/json"}
    if scenario:
        headers["x-mock-scenario"] = scenario
    conn.request("POST", path, orjson.dumps(body) if isinstance(body, dict) else body, headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def _hang_up_mid_stream(port: int) -> None:
    body = orjson.dumps({**MESSAGES, "stream": True})
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-mock-scenario: chunk_delay=20,chunks=50\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    sock.close()


@pytest.mark.parametrize("recording", ["process", "thread"])
def test_no_path_of_a_request_leaves_a_reference_cycle(
    mock_upstream: MockUpstream, tmp_path: Path, recording: str
) -> None:
    """With ``recording: "thread"`` the records are metered and stored in the worker's own
    interpreter, so that path must leave no cycles either."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    with running_gateway(_config(mock_upstream.base_url, dead_url), tmp_path, recording=recording) as gw:
        port = gw.port
        assert _post(port, "/v1/chat/completions", CHAT) == 200  # warm: first-use caches
        gc.collect()
        gc.disable()
        try:

            async def census() -> Counter[str]:
                gc.set_debug(gc.DEBUG_SAVEALL)
                try:
                    gc.collect()
                    return Counter(
                        kind for obj in gc.garbage if (kind := gateway_object_kind(obj)) is not None
                    )
                finally:
                    gc.set_debug(0)
                    gc.garbage.clear()

            statuses = [
                _post(port, "/v1/chat/completions", CHAT),
                _post(port, "/v1/chat/completions", {**CHAT, "stream": True}, "chunk_delay=5,chunks=5"),
                _post(port, "/v1/messages", {**MESSAGES, "stream": True}, "chunk_delay=5,chunks=5"),
                _post(port, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", GEMINI),
                _post(port, "/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True}),
            ]
            gw.flush()
            success = gw.call(census())
            statuses += [
                _post(port, "/v1/messages", MESSAGES, "error=529"),
                _post(port, "/v1/chat/completions", {**CHAT, "stream": True}, "die_after=3,chunks=10"),
                _post(port, "/v1/messages", {**MESSAGES, "stream": True}, "chunk_delay=1000,chunks=3"),
                _post(port, "/v1/messages", MESSAGES, "hang"),
                _post(port, "/v1/messages", MESSAGES, "garbage"),
                _post(port, "/v1/chat/completions", {"model": "dead-model", "messages": []}),
                _post(port, "/v1/chat/completions", {"model": "no-such-model", "messages": []}),
                _post(port, "/v1/chat/completions", b"{not json"),
                _post(port, "/v1/chat/completions", {"messages": []}),
            ]
            _hang_up_mid_stream(port)
            mock_upstream.wait_for(lambda: mock_upstream.cancelled >= 1)
            gw.flush()
            failures = gw.call(census())
        finally:
            gc.enable()
    assert statuses == [200, 200, 200, 200, 200, 529, 200, 200, 504, 502, 502, 404, 400, 400]
    assert not success, f"reference cycles left by answered requests: {dict(success)}"
    assert not failures, f"reference cycles left by failed requests: {dict(failures)}"
