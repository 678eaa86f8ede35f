import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def benchmarks_dir() -> Path:
    return BENCHMARKS


@pytest.fixture
def benchmark_module():
    """Import a module of benchmarks/ by name (they import each other as siblings, so benchmarks/ goes on the path
    while it loads)."""
    def load(name: str):
        sys.path.insert(0, str(BENCHMARKS))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(BENCHMARKS))
    return load
