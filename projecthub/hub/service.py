"""The hub's operations: one internal path that every API surface translates into.

The CoCalc surfaces (conat, v1, v2) and the native API all call these methods, so the
rules (who may do what, auto-start, activity, error texts) live in exactly one place.
Authorization errors use CoCalc's exact strings because the compat surfaces pass them on.

With many hubs on one database (``projecthub hub``), every change here that another hub may
hold a cached answer about (keys, accounts, limits, collaborators; starts and stops are
``remote_host.py``'s) is published on the hub event bus right after its store write
(``events.py``), and ``apply_event`` drops this hub's cached answers on receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator

from ..auth.resolve import Identity, KeyResolver
from ..errors import RemoteError
from ..host.host import Host
from ..host.sandbox import ProjectLimits
from ..observability.audit import audit_event, audit_exec_error, audit_exec_result
from ..store import AccountLimitReached, FieldTooLong, StoreUnavailable
from ..store.bounds import check_text
from .account_limits import AccountLimits
from .db import AsyncStore
from .events import HubEvent, HubEvents, NoEvents
from .lifecycle import DEFAULT_PURGE_AFTER_S, IdleStopper, Purger

log = logging.getLogger("projecthub.hub")

# Activity is recorded at most this often per project: it is a write on the hot path.
_TOUCH_INTERVAL_S = 30.0
# Collaborator checks are on every project call: answers are cached this long (in-process
# changes drop them at once; the TTL bounds what another process changes), and pairs
# used within _COLLAB_RECENT_S are re-checked in the background once half that old, so
# a client calling every few seconds does not wait for the store (like api keys).
_COLLAB_TTL_S = 5.0
_COLLAB_RECENT_S = 10.0
_COLLAB_REFRESH_LIMIT = 256
# Title of an account's own Jupyter API project (hub jupyter.execute without a project_id).
JUPYTER_SCRATCH_TITLE = "[Jupyter API scratch]"
# Roles that may delete a project, change its limits, or remove other collaborators.
OWNER_ROLES = ("owner", "admin")


def is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HubService:
    def __init__(self, db: AsyncStore, host: Host, resolver: KeyResolver, *,
                 host_id: int = 0, collab_ttl_s: float = _COLLAB_TTL_S,
                 account_limits: AccountLimits | None = None,
                 purge_after_s: float = DEFAULT_PURGE_AFTER_S,
                 events: HubEvents | NoEvents | None = None) -> None:
        self.db = db
        self.host = host
        self.resolver = resolver
        self.host_id = host_id
        # server-wide per-account caps (account_limits.py); overrides are read from the store
        self.account_limits = account_limits if account_limits is not None else AccountLimits()
        # serialises "count the owner's running projects, then start one" per owner
        self._owner_locks: dict[str, asyncio.Lock] = {}
        self._touched: dict[str, float] = {}
        # Idle stop (lifecycle.py): last API activity per project (monotonic), calls and
        # streams in flight, and idle stops in progress (calls wait for them, then start).
        # Memory only: the hot path pays two dict writes, no store write.
        self.last_active: dict[str, float] = {}
        self.inflight: dict[str, int] = {}
        self._stopping: dict[str, asyncio.Future[None]] = {}
        self.idle = IdleStopper(self)
        self.purger = Purger(self, purge_after_s)
        # collaborator checks are on every project call; cache them briefly, drop on change
        self._collab_cache: dict[tuple[str, str], tuple[float, bool]] = {}   # -> (expires, allowed)
        self._collab_used: dict[tuple[str, str], float] = {}   # -> last request it answered
        self._collab_epoch = 0   # bumped by every drop: a check that raced one is not cached
        self._collab_ttl = collab_ttl_s
        self._key_refresh: asyncio.Task[None] | None = None
        # tells other hubs what this one changed; what they change arrives in apply_event
        self.events = events if events is not None else NoEvents()
        self.events.on_event = self.apply_event
        self.events.on_resync = self.resync

    # -- other hubs' changes (events.py) ------------------------------------------------------
    def apply_event(self, event: HubEvent) -> None:
        """Another hub (or an admin command) committed a change: drop what this hub cached
        about it.  Only ever takes cached answers away; the next read is the store's."""
        if event.kind == "keys.changed":
            if event.key_id is not None:
                self.resolver.invalidate_key(event.key_id)
            else:
                self.resolver.invalidate_all()
        elif event.kind == "account.changed":
            self.resolver.invalidate_all()   # disabled, or no longer an admin
        elif event.kind == "collaborators.changed":
            assert event.project_id is not None
            self._forget_collaborators(event.project_id)
            self.resolver.invalidate_all()   # a removed collaborator's project keys die
        elif event.kind == "limits.changed":
            forget_spec = getattr(self.host, "forget_spec", None)
            if forget_spec is not None:
                forget_spec(event.project_id)   # None (an account's caps): all of them
            if event.project_id is not None:
                self.idle.reload_timeout(event.project_id)
        elif event.kind == "project.state":
            assert event.project_id is not None and event.running is not None
            note_state = getattr(self.host, "note_state", None)
            if note_state is not None:
                note_state(event.project_id, event.running)
            self._forget_collaborators(event.project_id)   # deleted projects stop too
        elif event.kind == "project.moved":
            forget = getattr(self.host, "forget", None)
            if forget is not None:
                forget(event.project_id)

    def resync(self) -> None:
        """Events may have been missed (NATS reconnected): drop every cached answer."""
        self.resolver.invalidate_all()
        self._collab_epoch += 1
        self._collab_cache.clear()
        resync = getattr(self.host, "resync", None)
        if resync is not None:
            resync()

    # -- background key refresh ----------------------------------------------------------
    def start_key_refresh(self) -> None:
        """Keep recently used keys' cache entries fresh in the background, so a client
        calling every few seconds never waits for its key to be re-checked."""
        interval = self.resolver.refresh_interval
        if interval is not None and self._key_refresh is None:
            self._key_refresh = asyncio.create_task(self._refresh_keys(interval), name="key-refresh")

    def start_lifecycle(self) -> None:
        """Stop idle projects and purge deleted ones in the background (lifecycle.py)."""
        self.idle.start()
        self.purger.start()

    async def stop_lifecycle(self) -> None:
        await self.idle.close()
        await self.purger.close()

    async def stop_key_refresh(self) -> None:
        task, self._key_refresh = self._key_refresh, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh_keys(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.resolver.refresh_due():  # idle server: no thread hop at all
                continue
            try:
                await self.db.run(self.resolver.refresh_recent)
                await self._refresh_collaborators()
            except StoreUnavailable as exc:   # a shared database away: one line a round
                log.warning("refreshing cached api keys failed: %s", exc.reason)
            except Exception:
                # Only an optimisation: on failure requests just re-check keys themselves.
                log.warning("refreshing cached api keys failed", exc_info=True)

    async def _refresh_collaborators(self) -> None:
        """Re-check, in one store round trip, the cached collaborator answers used
        recently that are at least half their TTL old; forget pairs unused for long."""
        now = time.monotonic()
        for key in [k for k, used in self._collab_used.items() if now - used >= _COLLAB_RECENT_S]:
            del self._collab_used[key]
        for key in [k for k, (expires, _) in self._collab_cache.items() if expires <= now]:
            del self._collab_cache[key]
        due = [k for k in self._collab_used
               if k in self._collab_cache and self._collab_cache[k][0] - now <= self._collab_ttl / 2]
        if not due:
            return
        due = due[:_COLLAB_REFRESH_LIMIT]
        epoch, started = self._collab_epoch, time.monotonic()
        answers = await self.db.run(lambda: [self.db.store.is_collaborator(*k) for k in due])
        if epoch != self._collab_epoch:
            return   # membership changed meanwhile: requests re-check for themselves
        for key, allowed in zip(due, answers):
            if key in self._collab_cache:
                self._collab_cache[key] = (started + self._collab_ttl, allowed)

    # -- identity and authorization ------------------------------------------------------
    async def resolve_key(self, key: str | None) -> Identity | None:
        # the cache answers the common case on the loop; misses go to the store thread
        return self.resolver.peek(key) or await self.db.run(self.resolver.resolve, key)

    async def is_collaborator(self, project_id: str, account_id: str) -> bool:
        if not is_uuid(project_id) or not is_uuid(account_id):
            raise RemoteError("invalid account_id or project_id -- all must be valid uuid's")
        key = (project_id, account_id)
        cached = self._collab_cache.get(key)
        now = time.monotonic()
        if cached and cached[0] > now:
            self._collab_used[key] = now
            return cached[1]
        epoch = self._collab_epoch
        allowed = await self.db.is_collaborator(project_id, account_id)
        if epoch == self._collab_epoch:
            self._collab_cache[key] = (now + self._collab_ttl, allowed)
            self._collab_used[key] = now
        return allowed

    def _forget_collaborators(self, project_id: str) -> None:
        self._collab_epoch += 1
        for key in [k for k in self._collab_cache if k[0] == project_id]:
            del self._collab_cache[key]
            self._collab_used.pop(key, None)

    async def authorize_project(self, identity: Identity, requested: Any) -> str:
        """CoCalc's /api/conat/project rules (spec 1.4), returning the project to use."""
        if identity.project_id:
            if requested and requested != identity.project_id:
                raise RemoteError("project specific api key must match requested project")
            return identity.project_id
        if not requested:
            raise RemoteError("must specify project_id or use project-specific api key")
        if not await self.is_collaborator(requested, identity.account_id or ""):
            raise RemoteError("user must be a collaborator on the project")
        return requested

    async def require_project_member(self, account_id: str | None, project_id: Any, action: str) -> dict[str, Any]:
        """Hub-side checks for projects.* functions (spec 7): error texts name the action."""
        if not account_id:
            raise RemoteError("Error: user must be signed in")
        if not is_uuid(project_id):
            raise RemoteError("Error: invalid account_id or project_id -- all must be valid uuid's")
        project = await self.db.get_project(project_id)
        if project is not None and not project.get("deleted"):
            if account_id in (project.get("users") or {}) or await self._is_admin(account_id):
                return project
        raise RemoteError(f"Error: must be collaborator on project to {action} it")

    async def _is_admin(self, account_id: str) -> bool:
        account = await self.db.get_account(account_id)
        return bool(account and account.get("is_admin"))

    async def project_role(self, account_id: str | None, project: dict[str, Any]) -> str | None:
        """``admin``, ``owner``, ``collaborator`` or None: what ``account_id`` is to ``project``
        (an admin counts as admin whether or not it is also on the project)."""
        if not account_id:
            return None
        if await self._is_admin(account_id):
            return "admin"
        return ((project.get("users") or {}).get(account_id) or {}).get("group")

    async def require_project_owner(self, account_id: str | None, project_id: Any, message: str
                                    ) -> dict[str, Any]:
        """The live project if ``account_id`` owns it or is an admin; else ``message`` (403).
        Non-members get the usual collaborator error first, so they learn nothing more."""
        project = await self.require_project_member(account_id, project_id, "access")
        if await self.project_role(account_id, project) not in OWNER_ROLES:
            raise RemoteError(message, status=403)
        return project

    # -- per-account caps (account_limits.py) ---------------------------------------------
    async def limits_for(self, account_id: str | None) -> AccountLimits | None:
        """The caps that apply to ``account_id``: None for admins (exempt) and unknown accounts."""
        if not account_id:
            return None
        account = await self.db.get_account(account_id)
        if account is None or account.get("is_admin"):
            return None
        try:
            return self.account_limits.merged(await self.db.get_account_limits(account_id))
        except ValueError:   # a hand-edited row: fall back to the server defaults, loudly
            log.warning("ignoring invalid limit overrides of account %s", account_id)
            return self.account_limits

    def _owner_lock(self, account_id: str) -> asyncio.Lock:
        return self._owner_locks.setdefault(account_id, asyncio.Lock())

    async def _ensure_running(self, project_id: str) -> Any:
        """``host.ensure_running``, unless starting the project would take its owner past
        ``max_running_projects``: then a clear error naming the limit (HTTP 429 on v3)."""
        stopping = self._stopping.get(project_id)
        if stopping is not None:   # an idle stop is under way: let it finish, then start afresh
            await asyncio.shield(stopping)
        if self.host.is_running(project_id):   # the hot path: no store reads
            return await self.host.ensure_running(project_id)
        owner = await self.db.project_owner(project_id)
        limits = await self.limits_for(owner)
        cap = limits.max_running_projects if limits is not None else None
        if owner is None or cap is None:
            return await self._start(project_id)
        async with self._owner_lock(owner):   # count and start as one step per owner
            if not self.host.is_running(project_id):
                owned = await self.db.owned_project_ids(owner)
                running = sum(1 for p in owned if p != project_id and self.host.is_running(p))
                if running >= cap:
                    raise RemoteError(
                        f"Error: account limit max_running_projects={cap} reached: the owner of "
                        f"project {project_id} already has {running} running projects; stop one "
                        "first", status=429, limit="max_running_projects")
            return await self._start(project_id)

    async def _start(self, project_id: str) -> Any:
        try:
            return await self.host.ensure_running(project_id)
        except RemoteError as exc:
            # the data disk cannot back this project's image: deleted projects still in
            # their grace period give their space up first (lifecycle.py)
            if "insufficient storage" not in str(exc) or not await self.purger.purge_early():
                raise
        return await self.host.ensure_running(project_id)

    # -- projects ----------------------------------------------------------------------------
    async def create_project(self, account_id: str, title: str = "", description: str = "",
                             start: bool = False) -> str:
        check_fields(title=title, description=description)
        limits = await self.limits_for(account_id)
        max_owned = limits.max_projects if limits is not None else None
        try:
            # the store counts and inserts in one write transaction: no overshoot under races
            project_id = await self._claim_spare(account_id, title, description, max_owned)
            if project_id is None:
                project_id = await self.db.create_project(account_id, title=title, description=description,
                                                          max_owned=max_owned)
        except AccountLimitReached as exc:
            raise RemoteError(
                f"Error: account limit {exc.name}={exc.limit} reached: this account already owns "
                f"{exc.limit} projects; delete one or ask the operator to raise the limit",
                status=403, limit=exc.name)
        audit_event("project_created", project_id=project_id, account_id=account_id)
        if self.host_id:  # the host that will run it (the only one, in the embedded server)
            await self.db.update_project(project_id, host_id=self.host_id)
        if start:
            try:
                await self._ensure_running(project_id)
            except BaseException:   # e.g. max_running_projects: a refused call leaves no project
                await self.delete_project(project_id, purge_now=True)
                raise
        return project_id

    async def _claim_spare(self, account_id: str, title: str, description: str,
                           max_owned: int | None = None) -> str | None:
        """A pre-started spare becomes the new project (see host/spares.py), if one is ready."""
        spare = self.host.spares.take()
        if spare is None:
            return None
        try:
            claimed = await self.db.claim_spare(spare.project_id, account_id, title, description,
                                                max_owned=max_owned)
        except BaseException:
            self.host.spares.give_back(spare)   # e.g. no such account: the row is unchanged
            raise
        if not claimed:
            self.host.spares.drop(spare)
            return None
        self.host.spares.park(spare)
        return spare.project_id

    async def touch(self, project_id: str, force: bool = False) -> None:
        now = time.monotonic()
        self.last_active[project_id] = now   # idle stop: in memory, every call
        if not force and now - self._touched.get(project_id, 0.0) < _TOUCH_INTERVAL_S:
            return
        self._touched[project_id] = now
        await self.db.update_project(project_id, last_edited=datetime.now(timezone.utc))

    def _enter(self, project_id: str) -> None:
        """A call or stream into the project begins: activity, and it is in flight (an idle
        stop never takes a project with calls in flight).  Synchronous on purpose: the idle
        check and this never interleave."""
        self.last_active[project_id] = time.monotonic()
        self.inflight[project_id] = self.inflight.get(project_id, 0) + 1

    def _leave(self, project_id: str) -> None:
        n = self.inflight.get(project_id, 1) - 1
        if n > 0:
            self.inflight[project_id] = n
        else:
            self.inflight.pop(project_id, None)
        self.last_active[project_id] = time.monotonic()   # idle time starts when it ends

    async def stop_idle(self, project_id: str, reason: str) -> None:
        """Stop ``project_id`` for ``reason`` unless a call came in (lifecycle.IdleStopper)."""
        # check and claim before the first await: a call that entered is in flight, one
        # that enters after this sees the stop and waits for it
        if self.inflight.get(project_id) or project_id in self._stopping:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stopping[project_id] = done
        try:
            log.info("stopping project %s: %s", project_id, reason)
            await self.host.stop(project_id, reason=reason)
        except Exception:   # its next call starts it fresh either way
            log.exception("could not stop idle project %s", project_id)
        finally:
            del self._stopping[project_id]
            done.set_result(None)

    async def start_project(self, project_id: str) -> None:
        self._enter(project_id)
        try:
            await self._ensure_running(project_id)
        finally:
            self._leave(project_id)

    async def stop_project(self, project_id: str) -> None:
        await self.host.stop(project_id, reason="stopped by request")

    async def delete_project(self, project_id: str, *, purge_now: bool = False,
                             account_id: str | None = None) -> None:
        """``purge_now``: a project a refused request made (nobody ever used it) leaves no
        files for the grace period either.  ``account_id``: who deleted it (audit log; else
        the request's caller)."""
        # mark it deleted first: a call racing with us then cannot start a new daemon after
        # the stop below (the host refuses to launch deleted projects)
        await self.db.delete_project(project_id)
        audit_event("project_deleted", project_id=project_id, account_id=account_id,
                    reason="a refused request made it" if purge_now else None)
        self._forget_collaborators(project_id)
        await self.host.stop(project_id, reason="deleted")
        # its files (home, state, disk image) stay for the grace period, then go
        # (lifecycle.Purger); --purge-after 0 removes them now
        if purge_now or self.purger.purge_after_s <= 0:
            await self.purger.purge(project_id, "a refused request made it" if purge_now
                                    else "deleted with --purge-after 0")

    async def project_state(self, project_id: str) -> dict[str, Any]:
        project = await self.db.get_project(project_id)
        if project is None:
            raise RemoteError(f"Error: project {project_id} does not exist")
        state = "running" if self.host.is_running(project_id) else project.get("state") or "stopped"
        if state == "running" and not self.host.is_running(project_id):
            # CoCalc's word for it while an idle stop runs; the reason comes with "stopped"
            state = "stopping" if project_id in self._stopping else "stopped"
        result = {"state": state, "time": iso(project.get("state_time") or project.get("created"))}
        if state == "stopped" and project.get("state_reason"):
            result["reason"] = project["state_reason"]   # e.g. "idle: no activity for 1800 s ..."
        return result

    async def project_status(self, project_id: str) -> dict[str, Any]:
        status = await self.host.status(project_id)
        status.setdefault("state", (await self.project_state(project_id))["state"])
        # the image's real size: differs from limits' disk_bytes while a shrink is pending
        # (next start) or could not apply (logged)
        status["disk_bytes_applied"] = self.host.sandbox.disk_bytes_applied(project_id)
        return status

    async def add_collaborator(self, project_id: str, account_id: str) -> None:
        if not is_uuid(account_id) or await self.db.get_account(account_id) is None:
            raise RemoteError(f"Error: no account with id {account_id}")
        await self.db.add_user(project_id, account_id, "collaborator")
        self._forget_collaborators(project_id)
        self.events.publish("collaborators.changed", project_id=project_id)

    async def remove_collaborator(self, project_id: str, account_id: str) -> None:
        try:
            await self.db.remove_user(project_id, account_id)
        except ValueError as exc:
            raise RemoteError(f"Error: {exc}")
        self._forget_collaborators(project_id)
        # project keys that this account created for the project die on next use (spec 2.3)
        self.resolver.invalidate_all()
        self.events.publish("collaborators.changed", project_id=project_id)

    async def set_limits(self, project_id: str, overrides: dict[str, Any], *,
                         account_id: str | None = None) -> dict[str, Any]:
        """Per-project overrides.  The owner may only tighten the project's *current* effective
        limits (which include what an operator set: an owner must not undo an operator's
        restriction); only an admin (or the CLI, ``account_id=None``) may loosen any."""
        project = await self.db.get_project(project_id)
        if project is None:
            raise RemoteError(f"Error: project {project_id} does not exist")
        if account_id is not None and await self.project_role(account_id, project) not in OWNER_ROLES:
            # a collaborator could otherwise squeeze the owner's project to nothing
            raise RemoteError("Error: only the project's owner or an admin may change its limits",
                              status=403)
        if not isinstance(overrides, dict):
            raise RemoteError("Error: limits must be a JSON object")
        settings = dict(project.get("settings") or {})
        stored = dict(settings.get("limits") or {})
        # keys absent from the request keep their stored (e.g. operator-set) values
        merged_overrides = {**stored, **overrides}
        defaults = self.host.sandbox.config.defaults
        try:
            limits = ProjectLimits.merged(defaults, merged_overrides)
        except ValueError as exc:
            raise RemoteError(f"Error: {exc}")
        if account_id is not None and not await self._is_admin(account_id):
            try:
                current = ProjectLimits.merged(defaults, stored)
            except ValueError:   # a stored override the server no longer accepts: be strict
                current = ProjectLimits.merged(defaults, {})
            raised = _raised_limits(current, limits)
            if raised:
                raise RemoteError(f"Error: only an admin may raise {', '.join(raised)} above the "
                                  "project's current limit", status=403)
        try:   # e.g. disk_bytes below what the project already stores: could never apply
            await asyncio.to_thread(self.host.sandbox.check_limits, project_id, limits)
        except ValueError as exc:
            raise RemoteError(f"Error: {exc}", status=409)
        settings["limits"] = merged_overrides
        await self.db.update_project(project_id, settings=settings)
        self.events.publish("limits.changed", project_id=project_id)
        audit_event("limit_changed", project_id=project_id, account_id=account_id, limits=overrides)
        await self.host.update_limits(project_id, limits)
        self.idle.set_timeout(project_id, limits.idle_timeout_s)
        return limits.to_json()

    async def get_limits(self, project_id: str) -> dict[str, Any]:
        project = await self.db.get_project(project_id)
        if project is None:
            raise RemoteError(f"Error: project {project_id} does not exist")
        overrides = (project.get("settings") or {}).get("limits", {})
        return ProjectLimits.merged(self.host.sandbox.config.defaults, overrides).to_json()

    # -- calls into a project --------------------------------------------------------------
    async def project_call(self, project_id: str, name: str, args: list[Any],
                           budget: float | None) -> Any:
        """Auto-start, record activity, forward to the daemon; bounded by ``budget`` seconds."""
        self._enter(project_id)
        try:
            return await self._project_call(project_id, name, args, budget)
        finally:
            self._leave(project_id)

    async def _project_call(self, project_id: str, name: str, args: list[Any],
                            budget: float | None) -> Any:
        await self.touch(project_id)
        started = time.monotonic()

        async def run() -> Any:
            await self._ensure_running(project_id)   # the running cap, an idle stop under way
            # the daemon gets slightly less than we wait, so its own answer to a spent budget
            # (an exec turned into a job, with its id) arrives before our bridge timeout
            remaining = None if budget is None else max(
                0.001, budget - (time.monotonic() - started) - min(0.25, budget * 0.1))
            try:   # kills for a timeout / by the OOM killer go to the audit log
                # Host.call resends what a daemon restarting in place refused unstarted
                return audit_exec_result(project_id, name, await self.host.call(project_id, name, args, remaining))
            except RemoteError as exc:
                audit_exec_error(project_id, name, exc)
                raise

        if budget is None:
            return await run()
        try:
            async with asyncio.timeout(budget):   # no extra task, unlike wait_for on 3.11
                return await run()
        except TimeoutError:
            subject = f"project.{project_id}.0.api.-"
            raise RemoteError(f"timeout - callHub: subject='{subject}', name='{name}', code='408' ")

    async def project_stream(self, project_id: str, name: str, args: list[Any],
                             window: int | None = None) -> AsyncIterator[Any]:
        """``window``: the stream's flow-control window in bytes (default: the fabric's)."""
        self._enter(project_id)   # an open stream is activity until it ends
        try:
            await self._ensure_running(project_id)   # the running cap applies to streams too
            inner = self.host.stream(project_id, name, args, window)
            try:
                async for item in inner:
                    yield audit_exec_result(project_id, name, item)   # the final event of an exec stream
            finally:   # a client that goes away frees the daemon stream now, not at garbage collection
                aclose = getattr(inner, "aclose", None)
                if aclose is not None:
                    await aclose()
        finally:
            self._leave(project_id)

    async def copy_path(self, src: str, src_path: str, target: str, target_path: str,
                        options: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """``projects.copyPathBetweenProjects`` once the caller's rights are checked
        (hub/functions.py): stopped projects start, and both count as active until it ends."""
        from ..host.copy import copy_between
        projects = tuple(dict.fromkeys((src, target)))
        for project_id in projects:
            self._enter(project_id)
        try:
            for project_id in projects:
                await self.touch(project_id)
                await self._ensure_running(project_id)
            return await copy_between(self.host, src, src_path, target, target_path, options, timeout_s)
        finally:
            for project_id in projects:
                self._leave(project_id)

    # -- the Jupyter API's per-account scratch project -----------------------------------------
    async def jupyter_scratch_project(self, account_id: str) -> str:
        """The account's own project for hub ``jupyter.execute`` without a project_id, made on
        first use: hidden, owned by the account (so only it and admins reach it), with the
        server's default limits plus the operator's ``jupyter_scratch_limits`` overrides."""
        project_id = await self.db.get_jupyter_project(account_id)
        if project_id and self.host.is_running(project_id):   # a deleted project is stopped
            return project_id
        overrides = await self.db.get_setting("jupyter_scratch_limits") or {}
        try:
            project_id = await self.db.create_jupyter_project(
                account_id, JUPYTER_SCRATCH_TITLE, {"limits": overrides} if overrides else {})
        except ValueError as exc:
            raise RemoteError(f"Error: {exc}")
        if self.host_id:
            await self.db.update_project(project_id, host_id=self.host_id)
        return project_id

    # -- accounts and keys ---------------------------------------------------------------------
    async def manage_api_keys(self, account_id: str, opts: dict[str, Any]) -> Any:
        action = opts.get("action")
        project_id = opts.get("project_id") or None
        if project_id is not None and not await self.is_collaborator(project_id, account_id):
            raise RemoteError("Error: you must be a collaborator on the project to manage its api keys")
        if project_id is not None and action == "create":
            project = await self.db.get_project(project_id)
            if project is None or project.get("deleted"):
                raise RemoteError(f"Error: project {project_id} does not exist")
        if action == "get":
            rows = await self.db.list_api_keys(account_id, project_id)
            return [key_json(r) for r in rows]
        if action == "create":
            expire = _parse_time(opts.get("expire"))
            name = opts.get("name") or ""
            check_fields(name=name)
            try:
                row, secret = await self.db.create_api_key(account_id, project_id=project_id,
                                                           name=name, expire=expire)
            except ValueError as exc:
                raise RemoteError(f"Error: {exc}")
            audit_event("key_created", account_id=account_id, key_id=row["id"], project_id=project_id, by="api")
            return [{**key_json(row), "secret": secret}]
        key_id = opts.get("id")
        if not isinstance(key_id, int):
            raise RemoteError("Error: 'id' must be an integer")
        row = await self.db.get_api_key(key_id)
        if row is None or not await self._may_manage_key(account_id, row, action):
            raise RemoteError(f"Error: no api key with id {key_id}")
        if action == "delete":
            await self.db.delete_api_key(key_id)
            self.resolver.invalidate_key(key_id)
            self.events.publish("keys.changed", key_id=key_id)
            audit_event("key_revoked", account_id=row["account_id"], key_id=key_id, by="api",
                        by_account_id=account_id)
            return None
        if action == "edit":
            kwargs: dict[str, Any] = {}
            if "name" in opts:
                check_fields(name=opts["name"])
                kwargs["name"] = opts["name"]
            if "expire" in opts:
                kwargs["expire"] = _parse_time(opts["expire"])
            try:
                await self.db.edit_api_key(key_id, **kwargs)
            except ValueError as exc:
                raise RemoteError(f"Error: {exc}")
            self.resolver.invalidate_key(key_id)
            self.events.publish("keys.changed", key_id=key_id)   # e.g. an earlier expiry
            return None
        raise RemoteError(f"Error: unknown action '{action}'")

    async def list_accounts(self, account_id: str) -> list[dict[str, Any]]:
        """Every account (``account_json``: no secrets, no key hashes); admins only."""
        await self._require_admin(account_id, "list accounts")
        return [account_json(row) for row in await self.db.list_accounts()]

    async def set_account_disabled(self, account_id: str, target_account_id: str,
                                   disabled: bool) -> dict[str, Any]:
        """Disable (or enable again) an account; admins only.  A disabled account's keys fail
        at once on every surface: the store records the change for every process's key cache
        (``Store.set_disabled``), and this process's cache is dropped here too."""
        await self._require_admin(account_id, "disable or enable accounts")
        if not is_uuid(target_account_id):
            raise RemoteError(f"Error: no account with id {target_account_id}", status=404)
        if disabled and target_account_id == account_id:
            raise RemoteError("Error: an admin cannot disable their own account", status=400)
        try:
            await self.db.set_disabled(target_account_id, disabled)
        except ValueError:
            raise RemoteError(f"Error: no account with id {target_account_id}", status=404)
        self.resolver.invalidate_all()
        self.events.publish("account.changed", account_id=target_account_id)
        audit_event("account_disabled" if disabled else "account_enabled", account_id=target_account_id,
                    by="api", by_account_id=account_id)
        row = await self.db.get_account(target_account_id)
        assert row is not None
        return account_json(row)

    async def _require_admin(self, account_id: str | None, action: str) -> None:
        if not account_id:
            raise RemoteError("Error: user must be signed in", status=401)
        if not await self._is_admin(account_id):
            raise RemoteError(f"Error: only an admin may {action}", status=403)

    async def _may_manage_key(self, account_id: str, row: dict[str, Any], action: Any) -> bool:
        if row["account_id"] == account_id:
            return True
        if action == "delete" and await self._is_admin(account_id):
            return True   # an admin may revoke any key (a leaked one: the admin page), never edit one
        # any collaborator may delete (never edit: e.g. lift the expiry of) any key of that
        # project (spec 2.5)
        return (action == "delete" and bool(row.get("project_id"))
                and await self.is_collaborator(row["project_id"], account_id))


def check_fields(**fields: Any) -> None:
    """Bounded string fields (store/bounds.py): a clear error naming the field and its maximum
    (HTTP 400 on v3, ``{"error"}`` on the CoCalc surfaces)."""
    for name, value in fields.items():
        try:
            check_text(name, value)
        except FieldTooLong as exc:
            raise RemoteError(f"Error: {exc}", status=400)


def _raised_limits(current: ProjectLimits, limits: ProjectLimits) -> list[str]:
    """Names of limits that ``limits`` loosens compared with ``current``: a larger value,
    ``None`` (unlimited) where ``current`` has a limit, network on where it is off, a longer
    ``idle_timeout_s`` or 0 (never stop) where it has one."""
    raised = []
    for name, now in current.to_json().items():
        value = getattr(limits, name)
        if name == "idle_timeout_s":   # 0 means never: the loosest value, not the tightest
            if (value or math.inf) > (now or math.inf):
                raised.append(name)
        elif isinstance(now, bool) or isinstance(value, bool):
            if value and not now:  # e.g. network access where the project has none
                raised.append(name)
        elif now is not None and (value is None or value > now):
            raised.append(name)
    return raised


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RemoteError(f"Error: invalid date '{value}'")
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise RemoteError("Error: expire must be an ISO 8601 string or milliseconds")


def account_json(row: dict[str, Any]) -> dict[str, Any]:
    """An account as the CLI and v3 show it.  ``disabled`` is CoCalc's ``banned`` flag: a
    disabled account's keys are refused everywhere (auth/resolve.py)."""
    return {
        "account_id": row["account_id"], "first_name": row.get("first_name") or "",
        "last_name": row.get("last_name") or "", "email": row.get("email"),
        "is_admin": bool(row.get("is_admin")), "disabled": bool(row.get("banned")),
        "created": iso(row.get("created")),
    }


def key_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "account_id": row["account_id"], "project_id": row.get("project_id"),
        "name": row.get("name") or "", "trunc": row.get("trunc"),
        "created": iso(row.get("created")), "expire": iso(row.get("expire")),
        "last_active": iso(row.get("last_active")),
    }
