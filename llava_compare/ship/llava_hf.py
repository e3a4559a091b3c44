"""The ``llava-hf`` export format: transformers' own ``LlavaForConditionalGeneration`` +
``LlavaProcessor`` (no custom code), for models with LLaVA-1.5's ``mlp`` projector."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.processor import LlavaCompareProcessor


def llava_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weight names -> transformers' ``LlavaForConditionalGeneration`` names."""
    prefixes = [("vision_tower.", "model.vision_tower."),
                ("compressor.proj.0.", "model.multi_modal_projector.linear_1."),
                ("compressor.proj.2.", "model.multi_modal_projector.linear_2."),
                ("language_model.model.", "model.language_model."),
                ("language_model.lm_head.", "lm_head.")]
    out = {}
    for name, tensor in model.state_dict().items():
        new = next((dst + name[len(src):] for src, dst in prefixes if name.startswith(src)), None)
        if new is None:
            raise ValueError(f"no llava-hf name for parameter {name!r}")
        out[new] = tensor.detach().contiguous()
    return out


def check_llava_hf(config: Any) -> None:
    comp = dict(config.compressor)
    if comp.get("type", "mlp") != "mlp" or comp.get("depth", 2) != 2:
        raise ValueError(
            f"--format llava-hf needs the 'mlp' compressor with depth 2 (LLaVA-1.5's projector); this "
            f"model's compressor is {comp}. Export it with --format native (loads with "
            "trust_remote_code=True or `import llava_compare`).")
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError("--format llava-hf needs a single integer vision_feature_layer")


def llava_hf_config(cfg: Any) -> Any:
    """transformers' ``LlavaConfig`` for a model of ours (``mlp`` compressor only): same towers,
    same image token and count. Used by the llava-hf export and by the benchmark's baseline arm."""
    from transformers import LlavaConfig

    check_llava_hf(cfg)
    llava_cfg = LlavaConfig(
        vision_config=cfg.vision_config.to_dict(), text_config=cfg.text_config.to_dict(),
        image_token_index=cfg.image_token_id, image_seq_length=cfg.tokens_per_image,
        vision_feature_layer=cfg.vision_feature_layer, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    llava_cfg.architectures = ["LlavaForConditionalGeneration"]
    return llava_cfg


def write_llava_hf(model: nn.Module, processor: LlavaCompareProcessor, out: Path, max_shard_size: str,
                    chat_template: str | None) -> None:
    from huggingface_hub import save_torch_state_dict
    from transformers import LlavaProcessor

    cfg = model.config
    llava_cfg = llava_hf_config(cfg)
    llava_cfg.dtype = next(model.parameters()).dtype
    save_torch_state_dict(llava_hf_state_dict(model), out, max_shard_size=max_shard_size,
                          metadata={"format": "pt"})
    llava_cfg.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    hf_proc = LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                             patch_size=cfg.vision_config.patch_size, vision_feature_select_strategy="default",
                             num_additional_image_tokens=1, chat_template=chat_template,
                             image_token=processor.image_token)
    size = processor.image_processor.crop_size
    n = hf_proc._get_num_multimodal_tokens(image_sizes=[[size["height"], size["width"]]]).num_image_tokens[0]
    if n != cfg.tokens_per_image:
        raise ValueError(f"LlavaProcessor would expand an image to {n} tokens, the model needs "
                         f"{cfg.tokens_per_image}; is the image processor's crop size the ViT's?")
    hf_proc.save_pretrained(out)
