"""Check a command line without running it: import the script (or -m module), let its own argparse parser
read the arguments, and stop there. `benchmarks/gpu_check.sh --dry-run` runs every step through this on CPU.

    python benchmarks/check_command.py benchmarks/linear_latency.py --m 1 16 --bits 2 3 4
    python benchmarks/check_command.py -m vlmq_gptqmodel.kernels.compile_check --arch 90
"""
from __future__ import annotations

import argparse
import runpy
import sys


class Parsed(Exception):
    """Raised once the target's parser has accepted the arguments: nothing after that runs."""


def check(target: list[str]) -> int:
    if not target or (target[0] == "-m" and len(target) < 2):
        print("usage: check_command.py SCRIPT [ARGS...] | -m MODULE [ARGS...]", file=sys.stderr)
        return 2
    module = target[1] if target[0] == "-m" else None
    script = module or target[0]
    args = target[2:] if module else target[1:]
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)  # a bad argument exits 2 here, with the script's own message
        raise Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop
    sys.argv = [script, *args]
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(script, run_name="__main__")
    except Parsed:
        print(f"ok: {' '.join(target)}")
        return 0
    finally:
        argparse.ArgumentParser.parse_args = original
    print(f"{script} finished without parsing a command line", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(check(sys.argv[1:]))
