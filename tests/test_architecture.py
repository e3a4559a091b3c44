"""The import layers of ``pyproject.toml`` ([tool.importlinter]) hold: ``lint-imports`` passes on
the package, and fails on a copy of it with one import that breaks a contract (so this test can
fail: a layer pointing up, an import circle, synth reaching into the model)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.is_file() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*cmd, "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_package_keeps_its_import_contracts():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("data/sample.py", "from ..train import main  # noqa", "Layers"),      # data importing up
    ("loading.py", "from .ship import export  # noqa", "Layers"),           # loader importing a command
    ("data/sample.py", "from . import problems  # noqa", "circles"),        # problems imports sample
    ("synth/generator.py", "from ..model import build  # noqa", "synth imports only data"),
    ("ranks.py", "from .data import sample  # noqa", "Layers"),             # the bottom layer importing up
    ("overrides.py", "from . import ranks  # noqa", "Layers"),              # bottom-layer siblings stay apart
    ("train/trainer.py", "from ..demo import replay  # noqa", "imports no demo"),  # the core reaching the demo
])
def test_a_broken_contract_fails(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "llava_compare", tmp_path / "llava_compare",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "llava_compare" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout
    broken = [ln for ln in out.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(contract in ln for ln in broken), out.stdout


def test_architecture_page_names_every_module():
    """docs/architecture.md's Layout section (the README links it) lists every package and
    module, so it keeps matching the tree."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    layout = page.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "llava_compare"
    missing = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if path.stem in ("__init__", "__main__"):
            name = f"{rel.parent.as_posix()}/" if rel.parent.parts else None
        else:
            name = path.stem
        if name and not re.search(rf"(?<![\w/]){re.escape(name)}(?:\.py)?\b" if not name.endswith("/")
                                  else rf"(?<![\w/]){re.escape(name)}", layout):
            missing.append(rel.as_posix())
    assert not missing, f"docs/architecture.md's Layout section does not mention: {', '.join(missing)}"
