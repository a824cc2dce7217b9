"""A file name that is not UTF-8 never leaves a call unanswered (adversarial review item 9).

``os.listdir`` returns such a name with a lone surrogate (PEP 383); the fabric's strict
UTF-8 encode raised outside ``_answer``'s ``try``, the task died and no reply was ever sent:
``system.listing`` hung until its budget (15 s here, forever without one).  Now every frame
replaces lone surrogates with U+FFFD, and a result that cannot be encoded still gets an
error reply.
"""

from __future__ import annotations

import time

import httpx

from projecthub.fabric.messages import FrameBuffer, encode
from tests.security.conftest import Proj, require_sandbox


def _conat(p: Proj, name: str, *args: object, timeout: float = 30) -> httpx.Response:
    return httpx.post(p.server.url + "/api/conat/project", headers={"Authorization": f"Bearer {p.key}"},
                      json={"project_id": p.project_id, "name": name, "args": list(args)}, timeout=timeout)


def test_listing_of_a_dir_with_a_non_utf8_name_answers(fresh_a) -> None:
    require_sandbox()
    p: Proj = fresh_a()
    out = p.run("mkdir -p ~/d && touch ~/d/$'bad\\xff' ~/d/good && ls ~/d | wc -l")
    assert out["stdout"] == "2\n", out
    t0 = time.monotonic()
    r = _conat(p, "system.listing", {"path": "d"}, timeout=10)
    took = time.monotonic() - t0
    assert took < 1.0, f"system.listing took {took:.1f} s"
    assert r.status_code == 200, r.text
    body = r.json()
    assert not (isinstance(body, dict) and "error" in body), body
    names = sorted(e["name"] for e in body)
    assert names == ["bad\ufffd", "good"], names   # the invalid byte, replaced consistently

    # the same name in an exec's output (decoded with replacement there) and in an error
    # message that quotes the path both arrive too
    r = _conat(p, "system.listing", {"path": "d/bad\ufffd/nope"}, timeout=10)
    assert r.status_code in (200, 400, 404), r.text
    assert p.run("echo still-fine")["stdout"] == "still-fine\n"


def test_frames_with_lone_surrogates_encode_and_decode() -> None:
    """The wire format itself: what the daemon sends for a surrogate-escaped name."""
    name = b"bad\xff".decode("utf-8", "surrogateescape")
    frame = encode({"t": "res", "id": 1, "ok": True, "result": [{"name": name}]})
    (message,) = FrameBuffer().feed(frame)
    assert message["result"] == [{"name": "bad\ufffd"}]
    # the fast path is untouched for valid text
    frame = encode({"t": "res", "id": 2, "ok": True, "result": "caf\u00e9 \U0001f600"})
    assert FrameBuffer().feed(frame)[0]["result"] == "caf\u00e9 \U0001f600"
