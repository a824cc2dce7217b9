"""Decoding CoCalc's positional arguments: the official client sends one options object."""

from __future__ import annotations

from typing import Any

from ..errors import RemoteError


def options(args: list[Any]) -> dict[str, Any]:
    """``args[0]`` as an options dict (missing or null -> ``{}``), or a clear error."""
    if not args or args[0] is None:
        return {}
    if not isinstance(args[0], dict):
        raise RemoteError("Error: expected an options object as the first argument")
    return args[0]
