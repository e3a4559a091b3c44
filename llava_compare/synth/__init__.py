"""Synthetic comparison data (demo and test tooling): real PNG files plus LLaVA-format JSON with
exactly known answers, written by :func:`generate` (``llava-compare synth``).

Modules: ``config`` (difficulty knobs, vocabularies), ``scene`` (drawing), ``items`` (what every
task shares), one module per task family (``brightness``, ``blur``, ``count``, ``change``,
``caption``), ``generator`` (planning, splits, files, the command line).

Neighbours: imports only ``llava_compare.data`` (the ``<image>`` placeholder); used by the
``synth`` command, by ``train`` (demo recipes generate their data on first use) and by tests.
"""

from .config import TASKS, Difficulty, difficulty
from .generator import generate, settings_mismatch

__all__ = ["TASKS", "Difficulty", "difficulty", "generate", "settings_mismatch"]
