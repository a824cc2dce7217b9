"""Fixtures shared by integration tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from projecthub.client import Client
from tests.server import Account, Server


@pytest.fixture
def client(server: Server, account: Account) -> Iterator[Client]:
    """The native client on the session's server, as a fresh account."""
    with Client(server.url, account.api_key) as c:
        yield c
