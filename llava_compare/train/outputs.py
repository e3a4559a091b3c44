"""What a finished stage writes into its output folder (the layout is documented in
:mod:`llava_compare.loading`, which reads it back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.processor import LlavaCompareProcessor
from ..loading import ADAPTER_DIR, COMPRESSOR, META, TRAINABLE, unwrap
from ..model.modeling import LlavaCompareForConditionalGeneration
from .stages import trainable_state_dict


def base_is_local(model_cfg: Mapping[str, Any]) -> bool:
    """True when some part was built from config (no hub id to re-fetch it from)."""
    return not (model_cfg["vision"].get("name_or_path") and model_cfg["llm"].get("name_or_path"))


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
