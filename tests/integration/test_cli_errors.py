"""The CLI never shows a traceback: every bad argument is one clear line on stderr and exit
code 2; a data dir without a store is refused unless --create; every subcommand and option
has help text; `serve` binds its port before it creates anything."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from projecthub.cli import build_parser
from tests.server import PROJECTHUB, TEST_ENV, cli


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PROJECTHUB, *args], capture_output=True, text=True, timeout=timeout,
                          env={**TEST_ENV, **os.environ, **(env or {})})


def assert_one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit code 2, exactly one line on stderr naming what is wrong, no traceback anywhere."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("projecthub") and "error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if out.stdout:   # admin commands: the same error as one JSON object on stdout
        assert set(json.loads(out.stdout)) == {"error"}
    return lines[0]


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    d = tmp_path / "store"
    cli(d, "account", "create", "--name", "Admin", "--admin", "--create")
    return d


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, store_dir: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    d = str(store_dir)
    cases: list[tuple[list[str], dict[str, str], tuple[str, ...]]] = [
        ([], {}, ("COMMAND",)),
        (["nonsense"], {}, ("nonsense",)),
        (["key"], {}, ("ACTION",)),
        (["key", "create", "--data-dir", d], {}, ("--account",)),
        (["key", "revoke", "--data-dir", d, "--id", "x"], {}, ("--id",)),
        (["key", "revoke", "--data-dir", d, "--id", "424242"], {}, ("no api key with id 424242",)),
        (["key", "rotate", "--data-dir", d, "--id", "424242"], {}, ("no api key with id 424242",)),
        (["key", "create", "--data-dir", d, "--account", "nope"], {}, ("no account with id nope",)),
        (["account", "disable", "--data-dir", d, "--account", "nope"], {}, ("no account",)),
        (["project", "delete", "--data-dir", d, "--project", "nope"], {}, ("no project with id nope",)),
        (["project", "limits", "--data-dir", d, "--project", "nope"], {}, ("no project",)),
        (["key", "list", "--data-dir", str(tmp_path / "typo")], {}, ("no projecthub store", "--create")),
        (["account", "create", "--name", "X", "--data-dir", str(tmp_path / "typo")], {},
         ("no projecthub store",)),
        (["key", "list", "--data-dir", str(a_file)], {}, ("not a directory",)),
        (["key", "list", "--data-dir", str(a_file), "--create"], {}, ("not a directory",)),
        (["doctor", "--data-dir", "/proc/nope"], {}, ("/proc/nope",)),
        (["doctor", "--data-dir", str(a_file)], {}, ("not a directory",)),
        (["serve", "--port", "99999"], {}, ("--port", "99999")),
        (["serve", "--port", "-1"], {}, ("--port",)),
        (["serve", "--port", "http"], {}, ("--port",)),
        (["serve", "--data-dir", str(a_file), "--port", "0"], {}, ("not a directory",)),
        (["serve", "--data-dir", "/proc/nope", "--port", "0"], {}, ("/proc/nope",)),
        (["serve", "--purge-after", "3 weeks", "--port", "0"], {}, ("--purge-after",)),
        (["serve", "--port", "0"], {"PROJECTHUB_PURGE_AFTER": "soon"}, ("--purge-after",)),
        (["serve", "--keep-alive", "soon"], {}, ("--keep-alive",)),
        (["serve", "--keep-alive", "0", "--port", "0"], {}, ("--keep-alive",)),
        (["serve", "--spare-projects", "-1", "--port", "0"], {}, ("--spare-projects",)),
        (["serve", "--default-limits", "{oops", "--port", "0"], {}, ("--default-limits",)),
        (["serve", "--default-limits", "[1]", "--port", "0"], {}, ("--default-limits",)),
        (["serve", "--default-limits", '{"pids": -5}', "--port", "0"], {}, ("pids",)),
        (["serve", "--default-limits", '{"memory_bytes": "lots"}', "--port", "0"], {}, ("memory_bytes",)),
        (["serve", "--port", "0"], {"PROJECTHUB_DEFAULT_LIMITS": "{oops"}, ("PROJECTHUB_DEFAULT_LIMITS",)),
        (["serve", "--account-limits", "{oops", "--port", "0"], {}, ("--account-limits",)),
        (["serve", "--account-limits", '{"max_projects": -1}', "--port", "0"], {}, ("max_projects",)),
        (["serve", "--uid-range", "9-1", "--port", "0"], {}, ("--uid-range",)),
        (["serve", "--host", "no.such.host.invalid", "--port", "0"], {}, ("--host",)),
        (["serve", "--log-level", "loud"], {}, ("--log-level",)),
        (["serve", "--header-timeout", "-5", "--port", "0"], {}, ()),
        (["serve", "--project-rootfs", "/nonexistent/rootfs", "--port", "0"], {}, ("--project-rootfs",)),
        (["serve", "--project-env", str(a_file), "--port", "0"], {}, ("--project-env", "not a directory")),
        (["serve", "--project-env", str(tmp_path), "--project-rootfs", str(tmp_path), "--port", "0"], {},
         ("exclude each other",)),
    ]
    for argv, env, needles in cases:
        if argv[:1] == ["serve"] and "--data-dir" not in argv:
            argv = [*argv, "--data-dir", str(tmp_path / "serve-data")]
        assert_one_line_error(run(*argv, env=env), *needles)
    # no serve above created a store or an account
    assert not (tmp_path / "serve-data" / "hub.db").exists()


def test_expire_must_be_a_future_time(store_dir: Path) -> None:
    account = json.loads(run("account", "list", "--data-dir", str(store_dir)).stdout)["accounts"][0]
    for expire in ("2001-01-01", "2001-01-01T00:00:00Z", "yesterday"):
        assert_one_line_error(run("key", "create", "--data-dir", str(store_dir), "--account",
                                  account["account_id"], "--expire", expire), "--expire")
    key = cli(store_dir, "key", "create", "--account", account["account_id"], "--expire", "2099-12-31")
    assert_one_line_error(run("key", "rotate", "--data-dir", str(store_dir), "--id", str(key["id"]),
                              "--expire", "1999-12-31"), "--expire")
    listed = cli(store_dir, "key", "list", "--account", account["account_id"])["keys"]
    assert [k["expire"] for k in listed if k["id"] == key["id"]] == ["2099-12-31T00:00:00.000Z"]


def test_a_typo_never_creates_a_store(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    for argv in (["account", "create", "--name", "A"], ["key", "list"], ["account", "list"],
                 ["project", "list"], ["jupyter-api", "enable"], ["stop-all"]):
        assert_one_line_error(run(*argv, "--data-dir", str(typo)), "no projecthub store")
    assert not typo.exists()
    made = cli(typo, "account", "create", "--name", "A", "--create")
    assert set(made) == {"account_id", "api_key"}
    assert (typo / "hub.db").is_file()
    assert cli(typo, "account", "list")["accounts"][0]["account_id"] == made["account_id"]


def test_every_subcommand_and_option_has_help() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions}
                for name, child in action.choices.items():
                    if name not in helped:
                        missing.append(f"{path} {name}")
                    walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "projecthub")
    assert missing == []


@pytest.mark.parametrize("argv", [[], ["serve"], ["doctor"], ["key"], ["key", "list"], ["key", "rotate"],
                                  ["account", "disable"], ["project", "delete"], ["env", "build"],
                                  ["stop-all"], ["jupyter-api"]])
def test_help_shows_defaults(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "projecthub.cli", *argv, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "" and "usage: projecthub" in out.stdout
    if argv == ["serve"]:
        flat = " ".join(out.stdout.split())
        for text in ("(default 8765", "(default: 127.0.0.1)", "(default 7d", "(default: auto)"):
            assert text in flat, text
    if "--data-dir DIR " in out.stdout:
        assert "~/.local/share/projecthub" in out.stdout


def test_doctor_output_matches_its_help(tmp_path: Path) -> None:
    text = run("doctor", "--data-dir", str(tmp_path))
    assert text.returncode == 0, text.stderr
    layers = [line for line in text.stdout.splitlines() if line.lstrip().startswith("[")]
    assert layers and all("[  OK  ]" in line or "[MISSING]" in line for line in layers)
    as_json = run("doctor", "--data-dir", str(tmp_path), "--json")
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)   # exactly one JSON object
    assert len(report["layers"]) == len(layers)


def test_serve_on_a_busy_port_creates_nothing(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    data_dir = tmp_path / "data"
    try:
        out = run("serve", "--port", str(port), "--data-dir", str(data_dir))
    finally:
        busy.close()
    line = assert_one_line_error(out, f"127.0.0.1:{port}", "already in use")
    assert "sk-" not in out.stderr + out.stdout and "admin" not in line.lower()
    # nothing was made: no store, so no account and no key that points at the other server
    assert not (data_dir / "hub.db").exists()


def test_first_start_banner_is_plain_text_on_stderr(tmp_path: Path) -> None:
    import re

    import httpx

    from tests.server import Server
    server = Server(tmp_path, extra_args=["--spare-projects", "0"]).start()
    try:
        log = server.log()
        banner = log[log.index("Created the admin account"):]
        key = re.search(r"^    (sk-[A-Za-z0-9]{22})$", banner, re.M)
        assert key, banner
        assert "pip install cocalc-api 'mcp<2'" in banner and "cocalc-mcp-server" in banner
        assert f"COCALC_HOST={server.url} " in banner and f"host='{server.url}'" in banner
        assert f"key create --data-dir {tmp_path} --account" in banner
        assert not any(line.startswith("{") for line in banner.split("\n\n")[0].splitlines())
        r = httpx.get(server.url + "/api/v3/projects", headers={"Authorization": f"Bearer {key.group(1)}"})
        assert r.status_code == 200
    finally:
        server.stop()
        cli(tmp_path, "stop-all")
