"""The ``model:`` config of a stage that starts from a previous stage's output (``init_from``).

The earlier stage fixed the model's structure: which towers, their shapes, the compressor and the
image geometry. Its output is rebuilt exactly, so those keys come from its ``llava_compare.json``.
How the model runs is this stage's choice and comes from this stage's config: the attention
kernel, the weights' dtype, a 4-bit LLM (QLoRA); gradient checkpointing is ``optim.*`` and already
this stage's. A command-line override of a structural key that disagrees with the earlier stage
cannot be honoured, so it is an error naming both values (a recipe's default is not an override:
the stage-2 recipe's model group just describes the usual stage-1 output).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

# This stage's own choices (dotted paths under ``model.``).
RUNTIME_KEYS = ("attn_implementation", "dtype", "llm.load_in_4bit")
# Only used to initialise weights the earlier stage has trained or saved: nothing to apply or check.
INIT_ONLY_KEYS = ("seed", "compressor_init", "llm.initializer_range")


class InitFromConflict(ValueError):
    """A structural ``model.*`` override disagrees with the stage being started from."""


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{path}."))
        else:
            out[path] = value
    return out


def _overridden_model_paths(overrides: Iterable[str]) -> list[str]:
    """``model.x.y=...`` / ``model/x=...`` / ``model=...`` command-line overrides as dotted paths
    under ``model.`` ("" for the whole section)."""
    paths = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~").replace("/", ".")
        if key == "model":
            paths.append("")
        elif key.startswith("model."):
            paths.append(key[len("model."):])
    return paths


def stage_model_config(earlier: Mapping[str, Any], requested: Mapping[str, Any], overrides: Iterable[str],
                       init_from: str) -> dict[str, Any]:
    """The earlier stage's ``model:`` section with this stage's runtime keys; raises
    :class:`InitFromConflict` for a structural override that disagrees with it."""
    before, now = _flat(earlier), _flat(requested)
    for prefix in _overridden_model_paths(overrides):
        for path, value in now.items():
            if prefix and not (path == prefix or path.startswith(f"{prefix}.")):
                continue
            if path in RUNTIME_KEYS or path in INIT_ONLY_KEYS or before.get(path) == value:
                continue
            raise InitFromConflict(
                f"model.{path}={value!r} conflicts with the stage this run starts from: {init_from} was "
                f"trained with model.{path}={before.get(path)!r}. The model's structure comes from "
                "init_from; drop the override, or start from a stage-1 output built that way.")
    merged: dict[str, Any] = {**earlier, "vision": dict(earlier["vision"]), "llm": dict(earlier["llm"])}
    for path in RUNTIME_KEYS:
        if path in now:
            section, _, key = path.rpartition(".")
            (merged[section] if section else merged)[key] = now[path]
    return merged


# ``data.*`` keys that decide how images and turns are laid out in the prompt. The compressor and
# LoRA of the earlier stage learned on that layout; measured on the real-weights demo, a stage 2
# without the image markers its stage 1 was trained with stayed near chance (docs/evaluation.md).
PROMPT_KEYS = ("image_marker", "marker_template", "conversation_template", "system_prompt")


def prompt_format_changes(earlier_data: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    """This stage's prompt-layout settings that differ from the earlier stage's, each as
    ``data.key=new (earlier stage: old)``; keys the earlier stage did not record are not compared."""
    return [f"data.{key}={data.get(key)} (earlier stage: {earlier_data[key]!r})"
            for key in PROMPT_KEYS if key in earlier_data and earlier_data[key] != data.get(key)]
