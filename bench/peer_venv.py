"""The peer's own venv, ``.venv-peer/`` in the project root (git-ignored): cryptofeed 2.4.1 with
uvloop and asyncpg (the driver of its ``TradePostgres`` backend, an optional extra that a plain
``pip install cryptofeed`` leaves out). Created once with ``python -m venv`` and pip, reused
while it has them; nothing of tickvault goes in, and nothing of it into tickvault's venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .procs import ROOT

PEER_VENV = ROOT / ".venv-peer"
CRYPTOFEED_VERSION = "2.4.1"
PACKAGES = (f"cryptofeed=={CRYPTOFEED_VERSION}", "uvloop", "asyncpg")
_VERSIONS = (
    "import importlib.metadata as m, json\n"
    "out = {}\n"
    "for name in ('cryptofeed', 'uvloop', 'asyncpg', 'websockets'):\n"
    "    try:\n"
    "        out[name] = m.version(name)\n"
    "    except m.PackageNotFoundError:\n"
    "        out[name] = None\n"
    "print(json.dumps(out))\n"
)


class PeerUnavailable(RuntimeError):
    """The peer venv could not be made (no package registry, no venv module): skip the peer."""


def versions(python: Path) -> dict[str, str | None]:
    """Installed versions of the peer's packages in the venv of ``python``."""
    done = subprocess.run([str(python), "-c", _VERSIONS], capture_output=True, text=True)
    if done.returncode != 0:
        return {}
    found: dict[str, str | None] = json.loads(done.stdout)
    return found


def complete(found: Mapping[str, str | None]) -> bool:
    """Whether the venv holds what the peer needs: cryptofeed at the pinned version, uvloop and
    asyncpg at any."""
    return (
        found.get("cryptofeed") == CRYPTOFEED_VERSION
        and found.get("uvloop") is not None
        and found.get("asyncpg") is not None
    )


def ensure(log: Path, venv: Path = PEER_VENV) -> tuple[Path, dict[str, str | None]]:
    """The peer venv's python and its packages' versions, after creating or completing it."""
    python = venv / "bin" / "python"
    if python.exists():
        found = versions(python)
        if complete(found):
            return python, found
    print(f"peer: installing {' '.join(PACKAGES)} into {venv} (once)", flush=True)
    with open(log, "ab") as out:
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *PACKAGES],
        ]  # fmt: skip
        for step in steps:
            if step[2] == "venv" and python.exists():
                continue
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise PeerUnavailable(f"{' '.join(step[:4])} failed: {' | '.join(tail)}")
    found = versions(python)
    if not complete(found):
        raise PeerUnavailable(f"{venv} lacks {' '.join(PACKAGES)} after pip: {found}")
    return python, found
