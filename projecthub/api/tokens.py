"""``POST /api/v3/tokens/redeem``: spend a one-time sign-in token (``org.createToken``).

The token is the credential (no API key): the answer is a new API key of the token's
account, shown once -- ``{"account_id", "api_key", "key"}``.  The token comes in the JSON
body (``{"token": "..."}``, preferred: bodies are not logged by proxies) or as the
``token`` query parameter of the ``url`` that org.createToken returns.  POST only, so a
link preview or crawler that GETs the url never spends it.  A token that is unknown,
expired, already used, or of a disabled account is one answer, 401; failures count
against the client address like bad API keys (``auth/throttle.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..errors import RemoteError
from ..hub.orgs import REDEEM_PATH, redeem_token
from ..observability.audit import audit_event
from .requests import HTTPError, client_address, decode_object, read_body

_BODY_LIMIT = 4096


async def redeem(request: Request) -> JSONResponse:
    try:
        body = await read_body(request, _BODY_LIMIT)
        params: dict[str, Any] = await decode_object(body) if body.strip() else {}
    except HTTPError as exc:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
    unknown = sorted(set(params) - {"token"}) or sorted(set(request.query_params) - {"token"})
    if unknown:   # strict like the rest of /api/v3
        return JSONResponse({"error": f"unknown field '{unknown[0]}'"}, status_code=422)
    token = params.get("token", request.query_params.get("token"))
    if not isinstance(token, str) or not token:
        return JSONResponse({"error": "token is required (the token org.createToken returned)"},
                            status_code=400)
    throttle = request.app.state.throttle
    address = client_address(request)
    try:
        answer = await redeem_token(request.app.state.hub, token)
    except RemoteError as exc:
        return JSONResponse({"error": exc.message}, status_code=409)
    if answer is None:
        throttle.record_failure(address)
        audit_event("auth_failure", path=request.scope["path"], client=address, reason="sign-in token")
        delay = throttle.penalty(address)
        if delay:
            await asyncio.sleep(delay)
        return JSONResponse({"error": "invalid, expired or already used token"}, status_code=401)
    key = answer.get("key") if isinstance(answer.get("key"), dict) else {}
    audit_event("key_created", account_id=answer.get("account_id"), key_id=key.get("id"), by="sign-in token")
    return JSONResponse(answer, headers={"Cache-Control": "no-store"})


def routes() -> list[Route]:
    return [Route(REDEEM_PATH, redeem, methods=["POST"])]
