"""Where a new project goes: the live host with the most free capacity.

A host's capacity is what its heartbeat reports (CPUs, memory); its load is the number of
projects *assigned* to it in the store (``projects.host_id``, not deleted), not only those
running now: a project's home lives on its host, so every assigned project will come back
there.  The count is taken inside the store's write transaction that records the choice
(``Store.assign_host``), which every hub's writes serialise on, so two hubs placing at the
same moment each see the other's assignment and do not pile onto one host.
"""

from __future__ import annotations

from typing import Any

_GIB = 1 << 30
# A project is counted as needing this much of a host: 1 CPU share per _PROJECTS_PER_CPU
# projects, and _PROJECT_MEMORY of memory.  Only the ratio between hosts matters.
_PROJECTS_PER_CPU = 4
_PROJECT_MEMORY = 1 * _GIB


def weight(info: dict[str, Any]) -> float:
    """How many projects the host can carry, from its reported capacity: the smaller of its
    CPU and memory allowances (a host reporting nothing usable counts as one CPU)."""
    capacity = info.get("capacity") if isinstance(info, dict) else None
    capacity = capacity if isinstance(capacity, dict) else {}
    cpus = _number(capacity.get("cpus")) or 1.0
    memory = _number(capacity.get("memory_bytes"))
    by_cpu = cpus * _PROJECTS_PER_CPU
    return min(by_cpu, memory / _PROJECT_MEMORY) if memory else by_cpu


def choose(weights: dict[str, float], assigned: dict[str, int]) -> str:
    """The host with the most free capacity: the largest share of its weight still free
    after its assigned projects (over-full hosts compare by how little they are over);
    ties go to fewer assigned projects, then to the name (deterministic)."""
    if not weights:
        raise ValueError("no host to choose from")

    def key(name: str) -> tuple[float, int, str]:
        w = max(weights[name], 1e-9)
        return ((assigned.get(name, 0) + 1) / w, assigned.get(name, 0), name)
    return min(weights, key=key)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if value > 0 else 0.0
