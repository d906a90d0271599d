"""A blocking `BrokerClient` for scripts and tests that have no event loop of their own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from lotdeploy.broker.session import BrokerClient

_T = TypeVar("_T")


class SyncBrokerClient:
    """Blocking wrapper for scripts and tests: runs a BrokerClient on a private event loop.

    `with SyncBrokerClient(...) as c: c.add_route(text)`; every method mirrors BrokerClient.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = self._run(self._make(args, kwargs))

    @staticmethod
    async def _make(args: tuple[Any, ...], kwargs: dict[str, Any]) -> BrokerClient:
        return BrokerClient(*args, **kwargs)

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._runner.run(coro)

    def connect(self) -> None:
        self._run(self._client.connect())

    def close(self) -> None:
        """End the session and its event loop: what is still pending on the loop is
        cancelled and awaited here, not left to the garbage collector (which would close
        the loop first and print "Task was destroyed" on the user's stderr). Idempotent."""
        try:
            if self._runner.get_loop().is_closed():
                return
        except RuntimeError:  # the runner is closed
            return
        try:
            self._run(self._client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncBrokerClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._client.connected

    def call(self, work: Callable[[BrokerClient], Awaitable[_T]]) -> _T:
        """Run async `work` on the session (several of its commands at once, say)."""
        return self._run(_await(work(self._client)))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if isinstance(result, Awaitable):
                return self._run(_await(result))
            return result

        return call


async def _await(aw: Awaitable[_T]) -> _T:
    return await aw
