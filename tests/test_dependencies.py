"""Dependencies: pyproject.toml bounds transformers to the 5.x releases the suite passes on (the
trainer uses public Trainer API only), constraints.txt pins the exact versions the suite passed on,
which `make setup` installs with, and `make test-latest` frees transformers alone."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CORE = ("torch", "transformers", "peft", "accelerate", "deepspeed", "bitsandbytes")


def pins() -> dict[str, Version]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = Version(version)
    return out


def requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_constraints_pin_every_dependency_inside_its_range():
    pinned = pins()
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"constraints.txt has no pin for {req.name}"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} outside {req}"


def test_transformers_has_an_upper_bound():
    req = next(r for r in requirements() if r.name == "transformers")
    assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), req


def test_the_suite_runs_on_the_pinned_versions():
    pinned = pins()
    for name in CORE:
        installed = Version(md.version(name))
        assert Version(installed.base_version) == pinned[name], (
            f"{name} {installed} is installed but constraints.txt pins {pinned[name]}: regenerate it "
            "(pip freeze) once the suite passes on the new version")


def test_make_setup_installs_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if re.search(r"pip install .*-e ", line)]
    assert installs and all("-c constraints.txt" in line or "-c $(LATEST)/constraints-latest.txt" in line
                            for line in installs), installs


def test_make_test_latest_frees_only_transformers_and_its_own_dependencies():
    """test-latest installs under constraints.txt minus the pins of transformers and the packages
    it needs, so only those move; the newest 5.x must be inside pyproject's range."""
    makefile = (ROOT / "Makefile").read_text()
    assert "test-latest:" in makefile and '"transformers>=5,<6"' in makefile
    free = re.search(r"LATEST_FREE := \^\(([^)]*)\)==", makefile).group(1).split("|")
    assert "transformers" in free and not {"torch", "peft", "accelerate", "deepspeed"} & set(free)
    req = next(r for r in requirements() if r.name == "transformers")
    assert req.specifier.contains("5.99.0") and not req.specifier.contains("6.0.0"), req


def test_license_is_an_spdx_expression():
    """setuptools >= 77 deprecates the `license = {text = ...}` table (a multi-line warning on
    every install); the SPDX string is the replacement."""
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in PYPROJECT["build-system"]["requires"])
