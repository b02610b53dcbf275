"""Which facediff code a run used, so that a table never mixes code versions silently.

`code_version()` reads it now: the git commit of the checkout facediff is imported from, plus
`+dirty.<digest>` of its uncommitted changes to `facediff/` and `conf/` (untracked files
included), or `facediff <version>` for an installed copy. `LOADED` is the same, read when this
process imported facediff. The two differ when the checkout changed under a running process:
a joblib sweep's workers keep the modules they imported, while Hydra reads `conf/` afresh at
each job's start, so such a job runs new configs on old code (`fit` warns; the checkpoint and
metrics.json record both; facediff-report lists the versions its jobs ran).
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACKED = ("facediff", "conf")


def _git(*args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, check=True, timeout=10
    ).stdout


def _installed() -> str:
    try:
        return f"facediff {version('facediff')}"
    except PackageNotFoundError:
        return "facediff (version unknown)"


def code_version() -> str:
    """'<commit>' for a clean checkout, '<commit>+dirty.<sha1 of the changes>' for one with
    uncommitted changes to facediff/ or conf/, 'facediff <version>' where it is not a checkout
    (an installed wheel, or git missing)."""
    if not ((ROOT / ".git").exists() and (ROOT / "pyproject.toml").is_file()):
        return _installed()
    try:
        commit = _git("rev-parse", "--short=12", "HEAD").decode().strip()
        changes = _git("diff", "HEAD", "--", *TRACKED)
        untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", *TRACKED)
    except (OSError, subprocess.SubprocessError):
        return _installed()
    h = hashlib.sha1(changes)
    for name in sorted(n for n in untracked.split(b"\0") if n):
        path = ROOT / name.decode()
        h.update(name + b"\0" + (path.read_bytes() if path.is_file() else b""))
    return commit if not (changes or untracked) else f"{commit}+dirty.{h.hexdigest()[:10]}"


LOADED = code_version()


def record() -> dict:
    """{"code": the version now, "code_loaded": the one this process imported}."""
    return {"code": code_version(), "code_loaded": LOADED}


def warn_if_checkout_changed() -> None:
    """Warn where the checkout changed since this process imported facediff."""
    code = code_version()
    if code != LOADED:
        logging.getLogger("facediff.train").warning(
            "the facediff checkout changed under this process: its code was imported at %s, "
            "the configs were read at %s, so this job mixes the two (a sweep's workers keep "
            "the modules they imported); run sweeps from a clone or a git worktree you leave "
            "alone",
            LOADED,
            code,
        )


__all__ = ["LOADED", "code_version", "record", "warn_if_checkout_changed"]
