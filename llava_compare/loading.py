"""Stage outputs: what a finished stage writes, and how the next stage / export / eval loads it.

An output folder holds:
- ``config.json`` + processor/tokenizer files (always);
- ``llava_compare.json``: how to rebuild the base (the ``model:`` config with hub ids), the stage,
  the LoRA config, the recipe;
- ``model.safetensors``: the full base weights, only when the base cannot be re-fetched (a tiny
  model built from config) -- a 7B LLM is never copied, it is re-loaded from its hub id;
- ``compressor.safetensors``: the final compressor (always: it is what stage 1 produces);
- ``trainable.safetensors``: every parameter this stage trained (LoRA, compressor, ...);
- ``adapter/adapter_config.json``: the LoRA config, when the stage used LoRA (in a subfolder:
  transformers treats an ``adapter_config.json`` beside ``config.json`` as a PEFT-only folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .data.processor import LlavaCompareProcessor
from .model.build import build_model, quantization_config
from .model.modeling import LlavaCompareForConditionalGeneration
from .train.stages import trainable_state_dict

log = logging.getLogger(__name__)

META = "llava_compare.json"
TRAINABLE = "trainable.safetensors"
COMPRESSOR = "compressor.safetensors"
ADAPTER_DIR = "adapter"


def base_is_local(model_cfg: Mapping[str, Any]) -> bool:
    """True when some part was built from config (no hub id to re-fetch it from)."""
    return not (model_cfg["vision"].get("name_or_path") and model_cfg["llm"].get("name_or_path"))


def unwrap(model: nn.Module) -> LlavaCompareForConditionalGeneration:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_base(model: LlavaCompareForConditionalGeneration, processor: LlavaCompareProcessor,
              out_dir: str | Path, meta: Mapping[str, Any]) -> None:
    """Before training: config, processor, metadata, and full weights for a local-only base."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if base_is_local(meta["model"]):
        model.save_pretrained(out)
    else:
        model.config.save_pretrained(out)
    processor.save_pretrained(out)
    (out / META).write_text(json.dumps(meta, indent=2, default=str))


def save_trained(model: nn.Module, out_dir: str | Path,
                 trained: dict[str, torch.Tensor] | None = None) -> None:
    """After training: the trained parameters (``trained``: gathered ones under ZeRO-3/FSDP),
    the compressor, and the LoRA config if any."""
    out = Path(out_dir)
    trained = trainable_state_dict(model) if trained is None else trained
    save_file(trained, str(out / TRAINABLE))
    compressor = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).compressor.state_dict().items()}
    for name, tensor in trained.items():  # the trained values win over a possibly sharded module
        if "compressor." in name:
            compressor[name.split("compressor.", 1)[1]] = tensor
    save_file(compressor, str(out / COMPRESSOR))
    if hasattr(model, "peft_config"):
        model.peft_config["default"].save_pretrained(str(out / ADAPTER_DIR))


def load_trained(path: str | Path, merge: bool = True, load_in_4bit: bool = False
                 ) -> tuple[nn.Module, LlavaCompareProcessor]:
    """Rebuild a stage output. With ``merge``, LoRA is merged into the LLM (plain model back).
    ``load_in_4bit`` loads the LLM in 4-bit NF4 (QLoRA on top of a stage-1 output)."""
    path = Path(path)
    if not (path / META).is_file():
        raise FileNotFoundError(f"{path} is not a llava_compare stage output (no {META}); "
                                "pass the output_dir of a finished stage-1/stage-2 run")
    meta = json.loads((path / META).read_text())
    meta["model"]["llm"]["load_in_4bit"] = load_in_4bit
    if (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file():
        model = LlavaCompareForConditionalGeneration.from_pretrained(
            path, quantization_config=quantization_config(meta["model"]))
        processor = LlavaCompareProcessor.from_pretrained(path)
    else:
        # compressor_init is only a starting point: the trained compressor is loaded just below
        model, processor = build_model({**meta["model"], "compressor_init": None})
    model.compressor.load_state_dict(load_file(str(path / COMPRESSOR)))
    if (path / ADAPTER_DIR / "adapter_config.json").is_file():
        model = _load_lora(model, path, merge)
    elif (path / TRAINABLE).is_file():
        load_named(model, load_file(str(path / TRAINABLE)))
    return model, processor


def load_named(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load trained tensors by parameter name; refuse names the model does not have."""
    missing = set(tensors) - {n for n, _ in model.named_parameters()}
    if missing:
        raise KeyError(f"checkpoint has parameters the model lacks: {sorted(missing)[:5]}...")
    model.load_state_dict(tensors, strict=False)


def _load_lora(model: nn.Module, path: Path, merge: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig.from_pretrained(str(path / ADAPTER_DIR)))
    load_named(peft_model, load_file(str(path / TRAINABLE)))
    return peft_model.merge_and_unload() if merge else peft_model
