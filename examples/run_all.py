"""`make demo`: run every example against GRADSERVE_ADDRESS (default 127.0.0.1:50051)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import gradserve


def main() -> int:
    here = Path(__file__).parent
    with gradserve.Client() as client:
        for path in sorted(here.glob("example_*.py")):
            print(f"== {path.name}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.run(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
