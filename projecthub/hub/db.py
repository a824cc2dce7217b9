"""Async access to the synchronous Store from the event loop.

The store is synchronous SQLAlchemy Core (the CLI uses it directly).  The server runs every
store call on one dedicated thread: SQLite serialises writers anyway, and one thread keeps
connections and transactions simple while the event loop never blocks on disk.

On PostgreSQL a call waits for a network round trip or two instead of a local file, and
readers never block each other: a few threads (each with its own pooled connection) keep
one slow call from queueing all the others.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from ..store import Store

T = TypeVar("T")
# Below the engine's pool size (store/engine.py), so the store threads never wait for a connection.
POSTGRESQL_WORKERS = 4


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        workers = 1 if store.engine.dialect.name == "sqlite" else POSTGRESQL_WORKERS
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.run(method, *args, **kwargs)

        call.__name__ = name
        return call

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
