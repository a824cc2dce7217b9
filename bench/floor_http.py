"""The HTTP floor: a trivial Starlette app, served by uvicorn like ``projecthub serve``
(asyncio loop, httptools).  /echo answers a JSON POST; /spawn also spawns the argv in
the body with asyncio, capturing stdout and stderr (HTTP + spawn, no sandbox).  PUT and
GET /file?path=P write the body to P as it arrives / stream P back in 1 MiB reads (the HTTP
stack's own floor for the files scenario: no auth, no project, the simplest file I/O)."""

import asyncio
import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
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


async def put_file(request: Request) -> JSONResponse:
    size = 0
    with open(request.query_params["path"], "wb") as f:
        async for chunk in request.stream():
            f.write(chunk)
            size += len(chunk)
    return JSONResponse({"size": size})


async def get_file(request: Request) -> Response:
    path = request.query_params["path"]

    async def body():   # type: ignore[no-untyped-def]
        with open(path, "rb") as f:
            while data := f.read(1 << 20):
                yield data
    return StreamingResponse(body(), headers={"Content-Length": str(os.path.getsize(path))},
                             media_type="application/octet-stream")


app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/spawn", spawn, methods=["POST"]),
                        Route("/file", put_file, methods=["PUT"]), Route("/file", get_file, methods=["GET"])])
