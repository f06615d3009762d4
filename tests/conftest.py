"""Shared fixtures: the mock upstream and a running gateway, both on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import uvloop

from tests.mock_upstream import MockUpstream

# The gateway runs on uvloop in production; tests that drive asyncio directly use it too.
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(scope="session")
def mock_upstream_session() -> Iterator[MockUpstream]:
    with MockUpstream() as mock:
        yield mock


@pytest.fixture
def mock_upstream(mock_upstream_session: MockUpstream) -> MockUpstream:
    """The session's mock upstream, with its recorded exchanges and settings cleared."""
    mock_upstream_session.reset()
    return mock_upstream_session
