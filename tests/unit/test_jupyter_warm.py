"""A spare project's Jupyter warm-up (project/jupyter/warm.py) with real kernels: the
zygote and one warm pooled kernel, kept past the idle window while held, released by the
claim, and never held when the claim came first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from projecthub.project.jupyter import JupyterService
from projecthub.project.jupyter.warm import warm_stateless
from tests.unit.loops import close_loop
from tests.unit.test_jupyter import make_ctx, run, wait_until

IDLE_S = 0.3


@pytest.fixture(scope="module")
def mpl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mpl")


def _idle_for_a_while(lp: asyncio.AbstractEventLoop, service: JupyterService) -> None:
    """Longer than the idle window, then what the upkeep task runs."""
    run(lp, asyncio.sleep(IDLE_S * 3))
    lp.call_soon(service.pool.housekeeping)
    run(lp, asyncio.sleep(0.3))


def test_warm_up_holds_the_pool_and_zygote_until_released(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir), pool_size=1, pool_idle_timeout_s=IDLE_S)
        run(lp, service.start())
        result = run(lp, warm_stateless(service, "python3", keep=lambda: True), 120)
        assert result["warmed"] is True, result
        zygotes = service.launcher.zygotes
        assert zygotes is not None and [z.pid for z in zygotes.zygotes()] == [result["zygote_pid"]]
        zygote = psutil.Process(result["zygote_pid"])
        kernels = service.pool.idle_kernels()
        assert len(kernels) == 1 and kernels[0].warmed
        assert psutil.Process(kernels[0].pid).ppid() == zygote.pid   # forked, not launched
        _idle_for_a_while(lp, service)
        assert service.pool.idle_kernels() == kernels and zygote.is_running()   # held
        service.pool.release_holds()   # the project is claimed: it ages from now
        _idle_for_a_while(lp, service)
        wait_until(lp, lambda: not service.pool.idle_kernels() and not zygotes.zygotes(), 10)
        wait_until(lp, lambda: not zygote.is_running() or zygote.status() == psutil.STATUS_ZOMBIE, 10)
        run(lp, service.close())
    finally:
        close_loop(lp)


def test_a_claim_before_the_warm_up_leaves_nothing_held(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir), pool_size=1, pool_idle_timeout_s=IDLE_S)
        run(lp, service.start())
        result = run(lp, warm_stateless(service, "python3", keep=lambda: False), 120)
        assert result == {"warmed": False, "reason": "claimed before the warm-up"}
        assert not service.pool.idle_kernels() and not service.launcher.zygotes.zygotes()
        # claimed while the zygote started: the pool ages (and closes the zygote) like any other
        answers = iter([True, False])
        result = run(lp, warm_stateless(service, "python3", keep=lambda: next(answers)), 120)
        assert result["reason"] == "claimed during the warm-up"
        _idle_for_a_while(lp, service)
        wait_until(lp, lambda: not service.pool.idle_kernels() and not service.launcher.zygotes.zygotes(), 15)
        run(lp, service.close())
    finally:
        close_loop(lp)


def test_unknown_kernel_is_reported_not_raised(tmp_path: Path, mpl_dir: Path) -> None:
    lp = asyncio.new_event_loop()
    try:
        service = JupyterService(make_ctx(tmp_path, mpl_dir), pool_size=1)
        run(lp, service.start())
        assert run(lp, warm_stateless(service, "nope", keep=lambda: True)) == {
            "warmed": False, "reason": "no kernelspec 'nope'"}
        run(lp, service.close())
    finally:
        close_loop(lp)
