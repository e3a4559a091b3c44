"""Standalone ``trust_remote_code`` files, generated from the package sources at export time.

An export folder must load where ``llava_compare`` is not installed, so it carries
``configuration_llava_compare.py``, ``modeling_llava_compare.py`` and ``processing_llava_compare.py``
(named in ``config.json`` / ``processor_config.json`` ``auto_map``). They are not maintained by
hand: each is the package modules listed in :data:`BUNDLES`, concatenated in order, with

- ``from __future__ import annotations`` hoisted to the top (once);
- each intra-package import (``from .config import LlavaCompareConfig``) removed when an earlier
  module of the same bundle defines the name, or replaced by the value when it is a plain constant
  (``IMAGE_PLACEHOLDER = '<image>'``); anything else is an error naming the missing module, so a
  new dependency of the model code fails the export (and the tests) instead of shipping a broken file;
- module docstrings and ``__all__`` dropped.

So the package code is the one source of truth, and every file is self-contained: no relative
imports at all (each file defines its own copy of what it needs; transformers matches the config
and model classes by name).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

BUNDLES: dict[str, list[str]] = {
    "configuration_llava_compare.py": ["llava_compare.model.compressors", "llava_compare.model.vision",
                                       "llava_compare.model.config"],
    "modeling_llava_compare.py": ["llava_compare.model.compressors", "llava_compare.model.vision",
                                  "llava_compare.model.config", "llava_compare.model.sharding",
                                  "llava_compare.model.modeling"],
    "processing_llava_compare.py": ["llava_compare.data.sample", "llava_compare.data.checks",
                                    "llava_compare.data.padding", "llava_compare.data.processor"],
}

#: ``auto_map`` entries for config.json (the processor's goes into processor_config.json too).
AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_llava_compare.LlavaCompareConfig",
    "AutoModelForImageTextToText": "modeling_llava_compare.LlavaCompareForConditionalGeneration",
    "AutoProcessor": "processing_llava_compare.LlavaCompareProcessor",
}

_CONSTANT_TYPES = (str, int, float, bool, type(None))


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _resolve_relative(module_name: str, node: ast.ImportFrom) -> str:
    package = module_name.rsplit(".", node.level)[0]
    return f"{package}.{node.module}" if node.module else package


def _strip_module(module_name: str, defined: set[str]) -> tuple[str, set[str]]:
    """One module's source with its package-internal imports resolved; returns (code, new names)."""
    module = importlib.import_module(module_name)
    source = inspect.getsource(module)
    tree = ast.parse(source)
    lines = source.splitlines()
    replace: dict[int, tuple[int, list[str]]] = {}  # first line (0-based) -> (last line, new lines)
    for i, node in enumerate(tree.body):
        start, end = node.lineno - 1, node.end_lineno - 1
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):  # module docstring
            replace[start] = (end, [])
        elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
            replace[start] = (end, [])
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                  for t in node.targets):
            replace[start] = (end, [])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            source_mod = _resolve_relative(module_name, node)
            new: list[str] = []
            for alias in node.names:
                local = alias.asname or alias.name
                if alias.name in defined:
                    if local != alias.name:
                        new.append(f"{local} = {alias.name}")
                    continue
                value = getattr(importlib.import_module(source_mod), alias.name, None)
                if not isinstance(value, _CONSTANT_TYPES):
                    raise RuntimeError(
                        f"remote code: {module_name} imports {alias.name!r} from {source_mod}, which no "
                        f"earlier module of its bundle defines; add {source_mod} to "
                        "llava_compare.ship.remote_code.BUNDLES")
                new.append(f"{local} = {value!r}  # from {source_mod}")
            replace[start] = (end, new)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "llava_compare" for m in mods):
                raise RuntimeError(f"remote code: {module_name} imports llava_compare absolutely "
                                   f"(line {node.lineno}); use a relative import of a bundled module")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if i in replace:
            end, new = replace[i]
            out.extend(new)
            i = end + 1
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out).strip("\n"), _top_level_names(tree)


def render(filename: str) -> str:
    """The text of one standalone file (a key of :data:`BUNDLES`)."""
    modules = BUNDLES[filename]
    parts = [f'"""{filename}: standalone llava_compare code for ``trust_remote_code=True``.\n\n'
             "Generated by llava_compare.ship.remote_code from the package modules\n"
             + "".join(f"{m}\n" for m in modules)
             + 'Do not edit: re-export the model instead.\n"""\n\nfrom __future__ import annotations\n']
    defined: set[str] = set()
    for name in modules:
        code, names = _strip_module(name, defined)
        path = name.replace(".", "/") + ".py"
        parts.append(f"\n# {'-' * 30} {path} {'-' * 30}\n\n{code}\n")
        defined |= names
    text = "".join(parts)
    compile(text, filename, "exec")  # fail at export time, not at the user's load time
    return text


def write_remote_code(out_dir: str | Path) -> list[Path]:
    """Write every standalone file into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    paths = []
    for filename in BUNDLES:
        path = out / filename
        path.write_text(render(filename), encoding="utf-8")
        paths.append(path)
    return paths


__all__ = ["AUTO_MAP", "BUNDLES", "render", "write_remote_code"]
