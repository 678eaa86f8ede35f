"""Where the benchmarks write, and how: one results folder, a "reproduce:" line naming the exact command,
and files replaced whole (written beside, then renamed) so an interrupted run never leaves half a table."""
from __future__ import annotations

import os
import shlex
import sys
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
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text(text)
    os.replace(staging, path)
    return path
