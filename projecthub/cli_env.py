"""``projecthub env build|status|install``: the project software environment (host/environment.py).

Each prints one JSON object on stdout (progress goes to stderr); a failure prints
``{"error": ...}`` on stdout and one ``projecthub: error: ...`` line on stderr, exits 2, and
leaves the previous environment in use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path



def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _root(args: argparse.Namespace) -> Path:
    from .host.environment import default_root
    if args.env_dir:
        return Path(args.env_dir)
    if os.environ.get("PROJECTHUB_PROJECT_ENV"):
        return Path(os.environ["PROJECTHUB_PROJECT_ENV"])
    return default_root()


def _run(action) -> None:
    from .host.environment import EnvironmentError_
    try:
        result = action()
    except EnvironmentError_ as exc:   # like every admin command's error
        print(json.dumps({"error": str(exc)}))
        line = "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        print(f"projecthub: error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("projecthub: interrupted; the previous project environment stays in use", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(result))


def cmd_env_build(args: argparse.Namespace) -> None:
    from .host import environment as envmod

    def action() -> dict:
        root = _root(args)
        # the daemon's own packages always; --package replaces only the scientific set
        packages = (envmod.DAEMON_PACKAGES + tuple(args.package) if args.package
                    else envmod.DEFAULT_PACKAGES)
        if envmod.current_generation(root) is not None and not args.rebuild:
            _progress(f"a project environment exists in {root} (--rebuild to make a new one)")
        else:
            envmod.build(root, packages, progress=_progress)
        env = envmod.managed_environment(root)
        assert env is not None
        return envmod.status(env)
    _run(action)


def cmd_env_status(args: argparse.Namespace) -> None:
    from .host import environment as envmod

    def action() -> dict:
        root = _root(args)
        if (root / "bin" / "python").exists() and not (root / envmod.CURRENT).exists():
            return envmod.status(envmod.external_environment(root))
        env = envmod.managed_environment(root)
        if env is None:
            raise envmod.EnvironmentError_(f"no project environment in {root}: run `projecthub env build`")
        return envmod.status(env)
    _run(action)


def cmd_env_install(args: argparse.Namespace) -> None:
    from .host import environment as envmod

    def action() -> dict:
        root = _root(args)
        envmod.install(root, list(args.packages), progress=_progress)
        env = envmod.managed_environment(root)
        assert env is not None
        return envmod.status(env)
    _run(action)


def add_env_parser(sub: argparse._SubParsersAction) -> None:
    env = sub.add_parser("env", help="the project software environment (Python, ipykernel, numpy...)",
                         description="The software every project runs. Each subcommand prints one "
                                     "JSON object (progress on stderr).")
    actions = env.add_subparsers(dest="action", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--env-dir", default=None,
                       help="the environment's directory (default: $PROJECTHUB_PROJECT_ENV, "
                            "else ~/.cache/projecthub/project-env)")

    build = actions.add_parser("build", help="build the managed environment (default packages)")
    common(build)
    build.add_argument("--package", action="append", metavar="REQ",
                       help="build with these packages instead of the default scientific set")
    build.add_argument("--rebuild", action="store_true", help="build a new one even if one exists")
    build.set_defaults(func=cmd_env_build)
    status = actions.add_parser("status", help="what the environment holds")
    common(status)
    status.set_defaults(func=cmd_env_status)
    install = actions.add_parser("install", help="add packages for every project")
    common(install)
    install.add_argument("packages", nargs="+", metavar="PKG",
                         help="pip requirements or local files, e.g. polars 'numpy>=2' ./my.whl")
    install.set_defaults(func=cmd_env_install)
