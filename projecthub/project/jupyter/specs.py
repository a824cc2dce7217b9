"""Kernelspec discovery: which kernels exist, in CoCalc's listing format (spec 6.6).

jupyter_client finds the spec directories; we read each ``kernel.json`` ourselves
because CoCalc reports the file as written (``interrupt_mode`` and ``metadata`` are
omitted when the file lacks them), while ``KernelSpec.to_dict()`` fills in defaults.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from ...errors import RemoteError

CACHE_TTL_S = 15.0  # CoCalc caches the spec list in the project for 15 s


@dataclass(frozen=True)
class KernelSpecInfo:
    name: str                       # lower-cased directory name: the key callers use
    resource_dir: str
    argv: list[str]
    display_name: str
    language: str
    env: dict[str, str] = field(default_factory=dict)
    interrupt_mode: str | None = None     # None: absent from kernel.json ("signal" semantics)
    metadata: dict[str, Any] | None = None

    @property
    def interrupt_by_message(self) -> bool:
        return self.interrupt_mode == "message"

    @property
    def is_ipykernel(self) -> bool:
        """True for IPython kernels, which accept IPython config flags and magics."""
        return any("ipykernel" in a for a in self.argv)

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "display_name": self.display_name,
                               "language": self.language}
        if self.interrupt_mode is not None:
            out["interrupt_mode"] = self.interrupt_mode
        out["env"] = dict(self.env)
        if self.metadata is not None:
            out["metadata"] = self.metadata
        out["resource_dir"] = self.resource_dir
        out["argv"] = list(self.argv)
        return out

    def command(self, connection_file: str, extra: list[str] | None = None) -> list[str]:
        """The kernel's argv with templates filled in, as jupyter_client would build it."""
        cmd = list(self.argv) + list(extra or [])
        # A spec saying "python" means "the Python this server runs on" (same rule as
        # jupyter_client's format_kernel_cmd); PATH inside a project may differ.
        major, minor = sys.version_info[:2]
        if cmd and cmd[0] in {"python", f"python{major}", f"python{major}.{minor}"}:
            cmd[0] = sys.executable
        ns = {"connection_file": connection_file, "resource_dir": self.resource_dir,
              "prefix": sys.prefix}
        return [_fill(a, ns) for a in cmd]


def _fill(arg: str, ns: dict[str, str]) -> str:
    for key, value in ns.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _load(name: str, resource_dir: str, ksm: KernelSpecManager) -> KernelSpecInfo:
    path = os.path.join(resource_dir, "kernel.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        # ipykernel's built-in "python3" has no kernel.json: it is generated.
        raw = ksm.get_kernel_spec(name).to_dict()
    language = str(raw.get("language", ""))
    if language == "text/x-macaulay2":
        language = "Macaulay2"
    return KernelSpecInfo(
        name=name.lower(),
        resource_dir=resource_dir,
        argv=list(raw.get("argv", [])),
        display_name=str(raw.get("display_name", name)),
        language=language,
        env=dict(raw.get("env") or {}),
        interrupt_mode=raw.get("interrupt_mode"),
        metadata=raw.get("metadata"),
    )


class SpecCatalog:
    """Cached view of the installed kernelspecs."""

    def __init__(self, ttl_s: float = CACHE_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._specs: dict[str, KernelSpecInfo] = {}
        self._loaded_at = -1e18

    def _refresh(self) -> dict[str, KernelSpecInfo]:
        now = time.monotonic()
        if now - self._loaded_at > self._ttl_s:
            ksm = KernelSpecManager()
            specs: dict[str, KernelSpecInfo] = {}
            for name, resource_dir in ksm.find_kernel_specs().items():
                try:
                    specs[name.lower()] = _load(name, resource_dir, ksm)
                except Exception:
                    continue  # one broken kernel.json must not hide the others
            self._specs, self._loaded_at = specs, now
        return self._specs

    def all(self) -> list[KernelSpecInfo]:
        return sorted(self._refresh().values(), key=lambda s: s.display_name)

    def get(self, name: str) -> KernelSpecInfo:
        """The spec called exactly ``name`` (case-sensitive, like CoCalc's final lookup)."""
        specs = self._refresh()
        spec = specs.get(name) if isinstance(name, str) else None
        if spec is None:
            available = json.dumps(sorted(specs), separators=(",", ":"))
            raise RemoteError(
                "Error: **Unable to Spawn Jupyter Kernel:**\n\n"
                f'Error: No spec available for kernel "{name}".  Available specs: {available}'
            )
        return spec

    def api_list(self) -> list[dict[str, Any]]:
        return [s.to_api() for s in self.all()]
