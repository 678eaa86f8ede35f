"""Where the benchmarks write, and how: one results folder, a "reproduce:" line naming the exact command,
and files replaced whole (written beside, then renamed) so an interrupted run never leaves half a table."""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def reproduce_line(script: str, argv=None) -> str:
    """'reproduce: `python benchmarks/<script> ARGS`' with the arguments this run was given."""
    args = sys.argv[1:] if argv is None else list(argv)
    # quoted as a shell needs them (a --study-variants list has spaces and parentheses)
    return f"reproduce: `{shlex.join(['python', f'benchmarks/{script}', *args])}`"


def write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")  # per process: two writers never share it
    staging.write_text(text)
    os.replace(staging, path)
    return path


@contextmanager
def locked(path):
    """Hold an exclusive lock tied to `path` (a hidden file beside it) while reading, merging and rewriting it, so
    that two processes updating one results file never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def store_runs(store, identity: dict, runs: dict, replace: bool = False) -> dict:
    """Write `runs` to the JSON file `store` ({"identity", "runs"}) and return them together with the runs another
    process stored there meanwhile under the same identity (two grids may share one results folder); `replace`
    drops what the file held."""
    store = Path(store)
    with locked(store):
        if store.exists() and not replace:
            stored = json.loads(store.read_text())
            if stored.get("identity") == identity:
                runs = stored["runs"] | runs
        write_text(store, json.dumps({"identity": identity, "runs": runs}))
    return runs
