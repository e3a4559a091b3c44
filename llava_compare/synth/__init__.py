"""Synthetic comparison data (demo and test tooling): real PNG files plus LLaVA-format JSON with
exactly known answers, written by :func:`generate` (``llava-compare synth``).

Neighbours: imports only ``llava_compare.data`` (the ``<image>`` placeholder); used by the
``synth`` command, by ``train`` (demo recipes generate their data on first use) and by tests.
"""

from .generator import TASKS, SynthConfig, generate

__all__ = ["TASKS", "SynthConfig", "generate"]
