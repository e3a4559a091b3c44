"""For ``make test-latest``: say which transformers the latest venv holds against the tested pin.

Prints one line and exits 0. When the newest 5.x release is the version ``constraints.txt`` pins,
it says so plainly: the run then checks nothing beyond ``make test``.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pinned(name: str = "transformers") -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("==")[1].split("#")[0].strip()
    raise SystemExit(f"constraints.txt pins no {name}")


def main() -> None:
    installed, tested = md.version("transformers"), pinned()
    if installed == tested:
        print(f"test-latest: the newest transformers 5.x installed is {installed}, the version constraints.txt "
              "already pins (the tested one): this run checks nothing beyond `make test`.")
    else:
        print(f"test-latest: transformers {installed} (newest 5.x) against the tested {tested} (constraints.txt).")


if __name__ == "__main__":
    main()
