"""Never leave a half-written checkpoint: write into a staging folder beside the target, then rename."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path


def check_output_dir(out, overwrite: bool) -> Path:
    """Refuse an existing non-empty target up front, before any expensive work starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a directory path.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory or pass --overwrite.")
    return out


@contextlib.contextmanager
def staged_output(out, overwrite: bool = False):
    """Yield an empty staging directory; on success it replaces `out`, on any error it is deleted and
    `out` is left exactly as it was."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(out)
