"""What each stage trains: one function sets ``requires_grad`` (and adds LoRA), logs one
frozen/trainable line per component, and returns the optimizer's per-component groups.

Stage 1 (align): ViT and LLM frozen, compressor trained. Stage 2 (instruct): LoRA (or full) on the
LLM, compressor trainable, ViT frozen unless ``stage.train_vision`` (all of it, or the last
``stage.vision_trainable_layers`` encoder layers below ``vision_feature_layer``).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from ..model.lora import add_lora
from ..model.sharding import is_zero3_param
from ..model.vision import deepest_layer, encoder_layers, unreached_parameters

log = logging.getLogger(__name__)

COMPONENTS = ("vision_tower", "compressor", "language_model")


def component_of(param_name: str) -> str:
    """'base_model.model.language_model.model.layers.0...' -> 'language_model'."""
    for comp in COMPONENTS:
        if f"{comp}." in param_name or param_name.startswith(comp):
            return comp
    return "other"


def configure_stage(model: nn.Module, stage: Mapping[str, Any], peft_cfg: Mapping[str, Any]) -> nn.Module:
    """Freeze/unfreeze per the stage; wrap with LoRA when ``stage.train_llm == 'lora'``.

    Returns the model to train (a ``PeftModel`` under LoRA)."""
    train_llm = stage["train_llm"]
    if train_llm not in ("frozen", "lora", "full"):
        raise ValueError(f"stage.train_llm must be frozen, lora or full; got {train_llm!r}")
    model.requires_grad_(False)
    model.compressor.requires_grad_(bool(stage["train_compressor"]))
    feature_layer = model.config.vision_feature_layer
    set_vision_trainable(model.vision_tower, stage, feature_layer)
    if train_llm == "full":
        model.language_model.requires_grad_(True)
    if train_llm == "lora":
        compressor_flag = bool(stage["train_compressor"])
        model = add_lora(model, peft_cfg)  # peft freezes everything but the adapters...
        base = model.get_base_model()
        base.compressor.requires_grad_(compressor_flag)  # ...so re-enable what the stage trains
        set_vision_trainable(base.vision_tower, stage, feature_layer)
    keep_trainable_fp32(model)
    log_trainable(model)
    return model


def keep_trainable_fp32(model: nn.Module) -> int:
    """Upcast every trainable half-precision parameter to fp32; frozen weights stay as loaded.

    Under plain DDP, AdamW updates parameters in their own dtype: a bf16 weight near 0.02 has a
    step of 1.2e-4, so a compressor update at lr 2e-5 rounds away. fp32 trainables are the master
    copy (as PEFT keeps LoRA adapters in fp32); compute still runs in bf16 under the Trainer's
    autocast (``optim.bf16``), and the model casts at its module boundaries. DeepSpeed casts the
    module back to bf16 and keeps its own fp32 master copy. Returns the number of tensors upcast."""
    upcast = 0
    for p in model.parameters():
        # a ZeRO-3 partition's tensor is an empty placeholder: DeepSpeed keeps its fp32 master
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16) and not is_zero3_param(p):
            p.data = p.data.float()
            upcast += 1
    if upcast:
        log.info("kept %d trainable tensors in fp32 (frozen weights stay in half precision)", upcast)
    return upcast


def set_vision_trainable(vision_tower: nn.Module, stage: Mapping[str, Any], feature_layer: Any = -1) -> None:
    """``stage.train_vision``: the whole ViT below the features (layers above the deepest
    ``vision_feature_layer`` and the output heads stay frozen: nothing reaches them), or with ``stage.vision_trainable_layers=N`` only the
    N encoder layers just below ``feature_layer`` (the hidden state the compressor reads: the last
    N layers that reach it). The embeddings and earlier layers stay frozen; their features still
    reach the compressor through the residual stream."""
    train = bool(stage["train_vision"])
    last = stage.get("vision_trainable_layers")
    vision_tower.requires_grad_(train and last is None)
    if not train:
        return
    if last is None:  # the whole tower that reaches the features; the rest gets no gradient
        for p in unreached_parameters(vision_tower, feature_layer):
            p.requires_grad_(False)
        return
    layers = encoder_layers(vision_tower)
    used = deepest_layer(feature_layer, len(layers))  # hidden_states[i] is the output of the first i layers
    if not 0 < last <= used:
        raise ValueError(f"stage.vision_trainable_layers must be in 1..{used} (the ViT layers below "
                         f"vision_feature_layer {feature_layer}) or null for the whole tower; got {last}")
    for layer in layers[used - last:used]:
        layer.requires_grad_(True)


def log_trainable(model: nn.Module) -> dict[str, tuple[int, int]]:
    """One line per component: trainable / total parameters. Returns the counts."""
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        c = counts.setdefault(component_of(name), [0, 0])
        c[1] += p.numel()
        c[0] += p.numel() if p.requires_grad else 0
    for comp, (tr, tot) in counts.items():
        state = "trainable" if tr == tot else ("frozen" if tr == 0 else "partly trainable")
        log.info("%-15s %-16s %12s / %s params", comp, state, f"{tr:,}", f"{tot:,}")
    return {k: (v[0], v[1]) for k, v in counts.items()}


def param_groups(model: nn.Module, optim: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Optimizer groups with a learning rate per component (compressor: ``lr``, LLM/LoRA:
    ``llm_lr``, ViT: ``vision_lr``); no weight decay on biases and norms."""
    lrs = {"compressor": optim["lr"], "language_model": optim.get("llm_lr") or optim["lr"],
           "vision_tower": optim.get("vision_lr") or optim["lr"], "other": optim["lr"]}
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        comp = component_of(name)
        decay = p.ndim >= 2 and "norm" not in name.lower()
        g = groups.setdefault((comp, decay), {
            "params": [], "lr": lrs[comp], "name": f"{comp}{'' if decay else '_no_decay'}",
            "weight_decay": optim.get("weight_decay", 0.0) if decay else 0.0})
        g["params"].append(p)
    return list(groups.values())


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters this run trains (LoRA, compressor, ...), by their names in ``model``."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
