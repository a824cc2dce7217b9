"""docs/client.md's examples, run with doctest against a real server (URL and key from the
environment, as the doc says)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from tests.server import Server

DOC = Path(__file__).resolve().parents[2] / "docs" / "client.md"


def test_client_md_examples(server: Server, account, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTHUB_URL", server.url)
    monkeypatch.setenv("PROJECTHUB_API_KEY", account.api_key)
    failures, tried = doctest.testfile(str(DOC), module_relative=False, verbose=False, report=True,
                                       optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 50
    assert failures == 0, f"{failures} of {tried} examples in docs/client.md failed (see the output above)"
