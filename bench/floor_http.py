"""The HTTP floor: a trivial Starlette app, served by uvicorn like ``projecthub serve``
(asyncio loop, httptools).  /echo answers a JSON POST; /spawn also spawns the argv in
the body with asyncio, capturing stdout and stderr (HTTP + spawn, no sandbox)."""

import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PIPE = asyncio.subprocess.PIPE


async def echo(request: Request) -> JSONResponse:
    body = json.loads(await request.body() or b"{}")
    return JSONResponse({"ok": True, "got": len(body)})


async def spawn(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    proc = await asyncio.create_subprocess_exec(*body["argv"], stdout=PIPE, stderr=PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    out, err = await proc.communicate()
    return JSONResponse({"stdout": out.decode(), "stderr": err.decode(), "exit_code": proc.returncode})


app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/spawn", spawn, methods=["POST"])])
