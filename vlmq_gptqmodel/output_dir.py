"""Never leave a half-written checkpoint: write into a staging folder beside the target, then rename.

Staging folders are named `.<out>.partial-<pid>-<random>`, so that a later run can tell those of a run
that was killed (SIGKILL, power loss) from those of a run still going."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import List

from .errors import BadInput

STAGING_KINDS = ("partial", "old")


def check_output_dir(out, overwrite: bool) -> Path:
    """Refuse, before any expensive work starts, a target that cannot be written or replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a directory path.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BadInput(f"--out {out} exists and is not empty; choose a new directory or pass --overwrite.")
    _check_writable(out)
    return out


def _check_writable(out: Path) -> None:
    """Make the parent and a staging folder in it, and (for --overwrite) move `out` away and back."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = _new_staging_dir(out, "partial")
        try:
            if out.exists():
                out.rename(probe / out.name)
                (probe / out.name).rename(out)
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as e:
        raise BadInput(f"cannot write --out {out}: {e.strerror or e} ({e.filename or out.parent}); "
                       "choose a folder you can write and replace.") from e


def _new_staging_dir(out: Path, kind: str) -> Path:
    """An empty folder beside `out`, created with the user's umask (mkdtemp's 0700 would keep the
    checkpoint from other users once it is renamed into place)."""
    path = out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def stale_staging_dirs(out) -> List[Path]:
    """Staging folders of `out` left by runs that are no longer alive."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    found = []
    for kind in STAGING_KINDS:
        for path in out.parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit(f".{kind}-", 1)[1].split("-")[0]
            if not (pid.isdigit() and _alive(int(pid))):
                found.append(path)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged_output(out, overwrite: bool = False):
    """Yield an empty staging directory; on success it replaces `out`, on any error it is deleted and
    `out` is left exactly as it was."""
    out = check_output_dir(out, overwrite)
    stage = _new_staging_dir(out, "partial")
    try:
        yield stage
        _replace(out, stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _replace(out: Path, stage: Path) -> None:
    if not out.exists():
        stage.rename(out)
        return
    old = _new_staging_dir(out, "old")
    try:
        out.rename(old / out.name)
    except OSError:
        old.rmdir()
        raise
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)
