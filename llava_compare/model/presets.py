"""The two kinds of model component, and the named shapes of the tiny ones.

Each of ``model.vision`` and ``model.llm`` is either *pretrained* -- ``name_or_path`` (a hub id or
folder) plus runtime options; its shape comes from its own ``config.json`` -- or *tiny*: a random
tower built from shape keys, with no weights to download. A key that does nothing for the chosen
kind is an error naming it, so a ``max_position_embeddings`` beside a hub LLM cannot look applied.

The project's tiny models differ in shape on purpose (the CPU demo, the unit tests, the
benchmarks' tiny widths at the real image geometry, a 7B-shaped random model for GPU checks), so
each shape has a name here: ``model.llm.preset=test`` picks one, and a shape key set beside a
preset overrides that one value.
"""

from __future__ import annotations

from typing import Any, Mapping

#: Shape keys of a tiny component (they do nothing for a pretrained one).
SHAPE_KEYS = {
    "vision": ("type", "num_register_tokens", "image_size", "patch_size", "hidden_size", "num_layers",
               "num_heads", "intermediate_size"),
    "llm": ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings",
            "vocab_size", "initializer_range"),
}

#: Keys only a pretrained component reads (a tiny LLM uses its own tiny tokenizer).
PRETRAINED_ONLY_KEYS = {"vision": (), "llm": ("tokenizer",)}

#: Shape keys a tiny component may leave unset, and their values then.
SHAPE_DEFAULTS = {
    "vision": {"type": "clip", "num_register_tokens": 0},
    # vocab_size may exceed what the tiny tokenizer learns (the extra rows are never produced);
    # LLaMA's 0.02 init std suits d=4096 (see the ``tiny`` preset for a narrow LLM's)
    "llm": {"vocab_size": 512, "initializer_range": 0.02},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vision": {
        # the CPU demo's random CLIP tower (configs/model/tiny.yaml)
        "tiny": dict(image_size=64, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
        # the smallest that exercises every code path: unit tests (tests/conftest.py)
        "test": dict(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        # tiny widths at CLIP ViT-L/14-336's geometry (576 patches): the benchmarks' token counts
        "bench": dict(image_size=336, patch_size=14, hidden_size=128, num_layers=2, num_heads=4,
                      intermediate_size=512),
        # CLIP ViT-L/14 at 336 px with random weights: LLaVA-1.5-7B's tower for GPU checks
        "clip_vit_l14_336": dict(image_size=336, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
                                 intermediate_size=4096),
    },
    "llm": {
        # The CPU demo's LLM. Its init std is ~1/sqrt(hidden_size), not LLaMA's 0.02: at d=128 a
        # frozen lm_head row would have norm 0.23, so (final RMSNorm frozen under LoRA) the largest
        # reachable logit is ~2.6 and the loss floors at ~3.7 per token.
        "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, max_position_embeddings=2048,
                     vocab_size=512, initializer_range=0.088),
        "test": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=512,
                     vocab_size=512),
        # tiny widths with LLaMA's vocabulary (its LM head costs what it costs at scale)
        "bench": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024,
                      max_position_embeddings=8192, vocab_size=32000, initializer_range=0.02),
        # LLaMA-2-7B's shape (Vicuna-7B v1.5's) with random weights, for GPU checks
        "llama2_7b": dict(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008,
                          max_position_embeddings=4096, vocab_size=32000),
    },
}


def _set(cfg: Mapping[str, Any], key: str) -> bool:
    return cfg.get(key) is not None


def is_pretrained(cfg: Mapping[str, Any]) -> bool:
    """A component loaded from ``name_or_path`` (else built tiny from its shape)."""
    return _set(cfg, "name_or_path")


def resolve_component(part: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``model.<part>`` (``vision`` | ``llm``) checked for its kind; a tiny one with its preset and
    defaults filled in. Raises ``ValueError`` naming the key that does nothing, or what is missing."""
    out = dict(cfg)
    where = f"model.{part}"
    if is_pretrained(cfg):
        for key in ("preset", *SHAPE_KEYS[part]):
            if _set(cfg, key):
                raise ValueError(
                    f"{where}.{key} is set, but {where}.name_or_path={cfg['name_or_path']!r} is a pretrained "
                    f"{part} whose shape comes from its own config: drop {where}.{key} ({where}.{key}=null), or set "
                    f"{where}.name_or_path=null for a tiny random {part}")
        return out
    for key in PRETRAINED_ONLY_KEYS[part]:
        if _set(cfg, key):
            raise ValueError(f"{where}.{key} is set, but {where} is a tiny random {part} (no name_or_path), "
                             f"which does not read it: drop {where}.{key}, or set {where}.name_or_path")
    preset = cfg.get("preset")
    if preset is not None and preset not in PRESETS[part]:
        raise ValueError(f"{where}.preset={preset!r} is not a tiny {part} shape; valid: {', '.join(PRESETS[part])}")
    shape = {**SHAPE_DEFAULTS[part], **(PRESETS[part][preset] if preset else {}),
             **{k: cfg[k] for k in SHAPE_KEYS[part] if _set(cfg, k)}}
    missing = [k for k in SHAPE_KEYS[part] if k not in shape]
    if missing:
        raise ValueError(f"{where} is a tiny random {part} (no name_or_path) without "
                         f"{', '.join(f'{where}.{k}' for k in missing)}: set {where}.preset (one of "
                         f"{', '.join(PRESETS[part])}) or those keys, or {where}.name_or_path for a pretrained one")
    out.update(shape)
    return out


def resolve_model(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``model_cfg`` with both components resolved (:func:`resolve_component`)."""
    return {**model_cfg, **{part: resolve_component(part, model_cfg[part] or {}) for part in ("vision", "llm")}}


def stored_model_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model:`` section read back from a run's ``llava_compare.json``, without the keys its
    components' kinds do not read: outputs written before kinds were checked recorded every schema
    key (a hub LLM with the tiny shape's defaults), and such an output must still load."""
    out = dict(model_cfg)
    for part in ("vision", "llm"):
        cfg = dict(out.get(part) or {})
        unused = ("preset", *SHAPE_KEYS[part]) if is_pretrained(cfg) else PRETRAINED_ONLY_KEYS[part]
        out[part] = {k: v for k, v in cfg.items() if k not in unused}
    return out
