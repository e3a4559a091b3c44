"""Where LoRA attaches to this model: the LLM's linear layers only (never the ViT, the compressor
or ``lm_head``). Used by training (``train.stages``) and by loading a LoRA stage's checkpoints."""

from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

from torch import nn


def lora_target_regex(model: nn.Module, target_modules: Any = "all-linear") -> str:
    """A peft target regex matching the LLM's linear layers only (never the ViT, the compressor
    or lm_head). ``all-linear`` or a list of leaf names such as ``[q_proj, v_proj]``."""
    if target_modules == "all-linear":
        names = {n.rsplit(".", 1)[-1] for n, m in model.language_model.named_modules()
                 if isinstance(m, nn.Linear) and not n.endswith("lm_head")}
    else:
        names = set(target_modules)
    alternatives = "|".join(sorted(re.escape(n) for n in names))
    return rf"^language_model\.(?!lm_head).*\.({alternatives})$"


def add_lora(model: nn.Module, peft_cfg: Mapping[str, Any]) -> nn.Module:
    """``model`` wrapped as a ``PeftModel`` with LoRA (``peft_cfg``: r, alpha, dropout, target_modules)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=peft_cfg["r"], lora_alpha=peft_cfg["alpha"], lora_dropout=peft_cfg["dropout"],
                     target_modules=lora_target_regex(model, peft_cfg.get("target_modules", "all-linear")),
                     bias="none")
    with warnings.catch_warnings():  # peft <= 0.21 reads transformers 5's deprecated alias
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, cfg)
