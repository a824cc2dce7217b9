"""Credentials and subject permissions for the NATS fabric (``projecthub nats-config``).

Writes a nats-server configuration with one user per host and one user for all hubs, and
one credentials file per user for ``--nats-creds``.  The permissions are the fabric's trust
boundary between hosts (subjects: ``nats_wire``):

* host H may subscribe only to its own request subjects (``ph.host.H.>``), the hubs'
  heartbeat, its own heartbeat (to see a second instance of itself) and its own inboxes;
  it may publish only replies under ``_R.H.>`` and its heartbeat ``ph.heartbeat.H``.  So it
  can neither read another host's requests nor answer in its name: a hub accepts an answer
  on ``_R.H.…`` as H's, and only H's credentials can publish there;
* hubs may publish requests to every host and subscribe to every reply and heartbeat; they
  cannot subscribe to a host's request subjects (no hub can read another's calls there);
* only hubs may publish and subscribe to ``ph.hubs.events`` (cache invalidations between
  hubs, ``hub/events.py``): no host's credentials reach it, so a host can neither forge an
  event (mark a project stopped on every hub) nor read which keys were revoked.

Passwords are random (256 bits) and stored in plain text in the 0600 config and credentials
files (nats-server can also take bcrypt hashes; we keep no extra dependency for it).  Running
the command again keeps the passwords of users it already wrote, so adding a host does not
invalidate the others' credentials.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from .nats_wire import (HUB_INBOX_PREFIX, HUBS_EVENTS, HUBS_HEARTBEAT, REPLY_PREFIX, SUBJECT_PREFIX,
                        check_host_name, heartbeat_subject, host_inbox_prefix)

HUB_USER = "hub"
CONFIG_NAME = "nats-server.conf"


def host_user(host: str) -> str:
    return f"host-{host}"


def creds_path(out: Path, user: str) -> Path:
    return out / f"{user}.creds"


def hub_permissions() -> dict[str, Any]:
    return {"publish": {"allow": [f"{SUBJECT_PREFIX}.host.*.call", f"{SUBJECT_PREFIX}.host.*.stream",
                                  f"{SUBJECT_PREFIX}.host.*.ctl", HUBS_HEARTBEAT, HUBS_EVENTS,
                                  "_INBOX.>"]},
            "subscribe": {"allow": [f"{REPLY_PREFIX}.>", heartbeat_subject("*"),
                                    f"{HUB_INBOX_PREFIX}.>", HUBS_EVENTS]}}


def host_permissions(host: str) -> dict[str, Any]:
    check_host_name(host)
    return {"publish": {"allow": [f"{REPLY_PREFIX}.{host}.>", heartbeat_subject(host)]},
            "subscribe": {"allow": [f"{SUBJECT_PREFIX}.host.{host}.>", HUBS_HEARTBEAT,
                                    heartbeat_subject(host), f"{host_inbox_prefix(host)}.>"]}}


def server_config(users: dict[str, str], hosts: list[str], listen: str,
                  max_payload: int | None = None) -> dict[str, Any]:
    """The nats-server configuration (nats-server reads JSON as its config syntax)."""
    entries = [{"user": HUB_USER, "password": users[HUB_USER], "permissions": hub_permissions()}]
    entries += [{"user": host_user(h), "password": users[host_user(h)],
                 "permissions": host_permissions(h)} for h in hosts]
    config: dict[str, Any] = {"listen": listen, "authorization": {"users": entries}}
    if max_payload is not None:
        config["max_payload"] = max_payload
    return config


def write_config(out: Path, hosts: list[str], listen: str = "127.0.0.1:4222",
                 max_payload: int | None = None) -> dict[str, Path]:
    """Write ``out/nats-server.conf`` and one ``<user>.creds`` per user; the paths written."""
    hosts = list(dict.fromkeys(check_host_name(h) for h in hosts))
    if not hosts:
        raise ValueError("give at least one host id")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    users: dict[str, str] = {}
    written: dict[str, Path] = {}
    for user in [HUB_USER, *(host_user(h) for h in hosts)]:
        path = creds_path(out, user)
        users[user] = _existing_password(path, user) or secrets.token_urlsafe(32)
        _write_private(path, json.dumps({"user": user, "password": users[user]}) + "\n")
        written[user] = path
    config = out / CONFIG_NAME
    _write_private(config, json.dumps(server_config(users, hosts, listen, max_payload), indent=2) + "\n")
    written["config"] = config
    return written


def _existing_password(path: Path, user: str) -> str | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(raw, dict) and raw.get("user") == user and isinstance(raw.get("password"), str):
        return raw["password"]  # type: ignore[no-any-return]
    return None


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
