"""Start the ``mlp`` compressor from LLaVA-1.5's released stage-1 projector.

LLaVA-1.5 publishes its pretrained projector as ``mm_projector.bin`` (e.g. in
``liuhaotian/llava-v1.5-mlp2x-336px-pretrain-vicuna-7b-v1.5``): a torch state dict with
``model.mm_projector.0.{weight,bias}`` (Linear vision->LLM) and ``model.mm_projector.2.{weight,bias}``
(Linear LLM->LLM), the ``mlp2x_gelu`` layout our ``mlp`` compressor shares (``proj.0`` / ``proj.2``).

Use it from a recipe or the command line of a stage-1/stage-2 run::

    python -m llava_compare.train recipe=stage2_lora model.compressor_init=checkpoints/mm_projector.bin

(``build_model`` loads it after building the model; a ``.safetensors`` file with the same keys works
too.) ``llava-compare import-projector mm_projector.bin OUT.safetensors`` converts a file to the
compressor's own key names and prints its geometry.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from torch import nn

#: ``[model.]mm_projector.<i>.<weight|bias>`` (also with a ``base_model.`` prefix from some forks).
_KEY = re.compile(r"^(?:base_model\.)?(?:model\.)?mm_projector\.(\d+)\.(weight|bias)$")
SUPPORTED = ("mlp", "pool")  # compressors whose ``proj`` is LLaVA's Linear-GELU-Linear


class ProjectorImportError(ValueError):
    """The projector file does not fit the model (keys or shapes); the message says what differs."""


def read_projector(path: str | Path) -> dict[str, torch.Tensor]:
    """The projector tensors of a LLaVA ``mm_projector.bin`` / ``.safetensors``, renamed to the
    compressor's ``proj.<i>.<weight|bias>`` names. Other keys in the file are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(raw, dict):
            raise ProjectorImportError(f"{path} holds a {type(raw).__name__}, not a state dict")
    out = {}
    for key, value in raw.items():
        m = _KEY.match(key)
        if m and torch.is_tensor(value):
            out[f"proj.{m.group(1)}.{m.group(2)}"] = value
    if not out:
        raise ProjectorImportError(
            f"{path} has no 'model.mm_projector.<i>.weight' keys (LLaVA's projector); found "
            f"{sorted(raw)[:6]}{'...' if len(raw) > 6 else ''}")
    return out


def projector_geometry(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """``{"vision_dim", "text_dim", "depth"}`` of a projector read by :func:`read_projector`."""
    layers = sorted({int(k.split(".")[1]) for k in tensors})
    first, last = tensors[f"proj.{layers[0]}.weight"], tensors[f"proj.{layers[-1]}.weight"]
    return {"vision_dim": first.shape[1], "text_dim": last.shape[0], "depth": len(layers)}


def load_projector_into(compressor: nn.Module, path: str | Path) -> None:
    """Copy the projector in ``path`` into ``compressor.proj`` after checking every key and shape."""
    name = type(compressor).__name__
    proj = getattr(compressor, "proj", None)
    if not isinstance(proj, nn.Sequential):
        raise ProjectorImportError(
            f"model.compressor_init needs a compressor with LLaVA's MLP projector ({', '.join(SUPPORTED)}); "
            f"this model's is {name}")
    tensors = read_projector(path)
    expected = {f"proj.{k}": v for k, v in proj.state_dict().items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        geo = projector_geometry(tensors)
        raise ProjectorImportError(
            f"{path}: projector layers do not match the {name}: missing {missing}, unexpected {extra} "
            f"(the file is a depth-{geo['depth']} projector, the compressor has "
            f"{sum(isinstance(m, nn.Linear) for m in proj)} Linear layers)")
    bad = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if tensors[k].shape != v.shape]
    if bad:
        geo = projector_geometry(tensors)
        raise ProjectorImportError(
            f"{path}: projector shapes do not match the model ({'; '.join(bad)}). The file maps a "
            f"{geo['vision_dim']}-d vision feature to a {geo['text_dim']}-d LLM; the model needs "
            f"{compressor.vision_dim} -> {compressor.text_dim} (check model.vision / model.llm)")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(tensors[k].to(v.dtype))


def import_projector(model: nn.Module, path: str | Path) -> None:
    """Initialise ``model.compressor`` (a :class:`LlavaCompareForConditionalGeneration`) from ``path``."""
    import logging

    load_projector_into(model.compressor, path)
    logging.getLogger(__name__).info("compressor initialised from LLaVA projector %s", path)


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-projector",
                       help="convert LLaVA-1.5's mm_projector.bin to compressor weights (model.compressor_init)")
    p.add_argument("projector", help="mm_projector.bin or .safetensors with model.mm_projector.{0,2}.* keys")
    p.add_argument("out", nargs="?", default=None,
                   help="optional .safetensors to write with the compressor's key names (proj.0.weight, ...)")
    p.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    try:
        tensors = read_projector(args.projector)
    except (ProjectorImportError, FileNotFoundError) as e:
        raise SystemExit(f"import-projector: {e}") from e
    geo = projector_geometry(tensors)
    print(f"LLaVA projector: {geo['depth']} Linear layers, vision dim {geo['vision_dim']} -> LLM dim "
          f"{geo['text_dim']}; use it with model.compressor.type=mlp model.compressor_init={args.projector}")
    if args.out:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, args.out)
        print(f"wrote {args.out}")
    return 0


__all__ = ["ProjectorImportError", "read_projector", "projector_geometry", "load_projector_into",
           "import_projector"]
