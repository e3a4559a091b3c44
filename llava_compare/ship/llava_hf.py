"""The ``llava-hf`` export format: transformers' own ``LlavaForConditionalGeneration`` +
``LlavaProcessor`` (no custom code), for models with LLaVA-1.5's ``mlp`` projector.

The folder is written in the layout of the published llava-hf checkpoints (for example
``llava-hf/llava-1.5-7b-hf``): tensors named ``vision_tower.vision_model.*``,
``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.*`` -- what
transformers 4.x and vLLM read. transformers 5's ``save_pretrained`` would write its in-memory
names (``model.vision_tower.embeddings.*``, ...), which only transformers 5 reads back, so the
export names the tensors itself; transformers 5 maps the published names onto its modules on load.
The config, tokenizer and image-processor files are likewise written so both transformers 4.x and
5.x read them (see :func:`write_v4_compat`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.processor import LlavaCompareProcessor
from ..model.vision import num_prefix_tokens

log = logging.getLogger(__name__)

#: towers vLLM's LLaVA builds (``vllm/model_executor/models/llava.py``: CLIP, SigLIP, Pixtral)
VLLM_TOWERS = ("clip_vision_model", "siglip_vision_model")

#: what transformers 4.x's tower class puts before its module names (CLIP / SigLIP wrap a
#: ``vision_model``; transformers 5 dropped that level in memory, DINOv2 never had it)
_TOWER_PREFIX = {"clip_vision_model": "vision_model.", "siglip_vision_model": "vision_model.",
                 "dinov2": "", "dinov2_with_registers": ""}

#: transformers 5 renamed DINOv2's attention projections; 4.x and published checkpoints use the
#: old names (transformers 5 renames them back on load: ``conversion_mapping.py``, ``Dinov2Model``)
_DINOV2_RENAMES = (("attention.q_proj.", "attention.attention.query."),
                   ("attention.k_proj.", "attention.attention.key."),
                   ("attention.v_proj.", "attention.attention.value."),
                   ("attention.o_proj.", "attention.output.dense."))


# --- tensor names ----------------------------------------------------------------------------------
def llava_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weight names -> transformers 5's in-memory ``LlavaForConditionalGeneration`` names
    (``load_state_dict`` into a model built from :func:`llava_hf_config`; the benchmark does)."""
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


def published_name(name: str, tower_type: str) -> str:
    """transformers 5's in-memory llava name -> the published llava-hf checkpoint name."""
    if name.startswith("model.vision_tower."):
        rest = name[len("model.vision_tower."):]
        if tower_type.startswith("dinov2"):
            rest = next((rest.replace(a, b) for a, b in _DINOV2_RENAMES if a in rest), rest)
        return "vision_tower." + _TOWER_PREFIX[tower_type] + rest
    for src, dst in (("model.multi_modal_projector.", "multi_modal_projector."),
                     ("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")):
        if name.startswith(src):
            return dst + name[len(src):]
    raise ValueError(f"no published llava-hf name for {name!r}")


def published_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under the published llava-hf names (what the export writes)."""
    tower = model.config.vision_config.model_type
    return {published_name(k, tower): v for k, v in llava_hf_state_dict(model).items()}


# --- config ----------------------------------------------------------------------------------------
def check_llava_hf(config: Any) -> None:
    """Refuse, before anything is written, what ``LlavaForConditionalGeneration`` cannot express."""
    comp = dict(config.compressor)
    if comp.get("type", "mlp") != "mlp" or comp.get("depth", 2) != 2:
        raise ValueError(
            f"--format llava-hf needs the 'mlp' compressor with depth 2 (LLaVA-1.5's projector); this "
            f"model's compressor is {comp}. Export it with --format native (loads with "
            "trust_remote_code=True or `import llava_compare`).")
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError("--format llava-hf needs a single integer vision_feature_layer")
    vision = config.vision_config
    if num_prefix_tokens(vision) > 1:  # LLaVA's "default" drops exactly one token (CLS)
        raise ValueError(f"--format llava-hf: LLaVA drops at most one leading token, this {vision.model_type} "
                         f"tower has {num_prefix_tokens(vision)} (CLS + registers); use --format native")
    if vision.model_type in VLLM_TOWERS and config.image_size != vision.image_size:
        # LlavaForConditionalGeneration never asks CLIP/SigLIP to interpolate their position table
        raise ValueError(f"--format llava-hf: the model feeds {config.image_size} px images to a "
                         f"{vision.image_size} px {vision.model_type} tower (interpolated position "
                         "embeddings), which LLaVA does not do; use --format native")


def select_strategy(vision_config: Any) -> tuple[str, int]:
    """(``vision_feature_select_strategy``, ``num_additional_image_tokens``) that keep exactly the
    patches we train on: CLIP / DINOv2 drop their CLS (``default``), SigLIP has none (``full``)."""
    extra = num_prefix_tokens(vision_config)
    return ("default" if extra else "full"), extra


def llava_hf_config(cfg: Any) -> Any:
    """transformers' ``LlavaConfig`` for a model of ours (``mlp`` compressor only): same towers,
    same image token and count. Used by the llava-hf export and by the benchmark's baseline arm.

    ``vision_feature_layer`` is absolute and ``vision_config.num_hidden_layers`` the cut tower's
    (``model/vision.py`` ``truncate_tower``): transformers reads ``hidden_states[layer]`` and vLLM
    builds ``layer`` encoder layers, the same hidden state."""
    from transformers import LlavaConfig

    check_llava_hf(cfg)
    strategy, _ = select_strategy(cfg.vision_config)
    vision = cfg.vision_config.to_dict()
    # DINOv2's backbone outputs (LLaVA never reads them) still name the uncut depth after
    # truncate_tower, and a config whose out_features exceed its layers does not load: drop them
    for key in ("out_features", "out_indices", "stage_names"):
        vision.pop(key, None)
    llava_cfg = LlavaConfig(
        vision_config=vision, text_config=cfg.text_config.to_dict(),
        image_token_index=cfg.image_token_id, image_seq_length=cfg.tokens_per_image,
        vision_feature_layer=cfg.vision_feature_layer, vision_feature_select_strategy=strategy,
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    llava_cfg.architectures = ["LlavaForConditionalGeneration"]
    return llava_cfg


def client_warning(vision_config: Any) -> str | None:
    """The one-line warning for towers not every client loads (None for CLIP / SigLIP)."""
    kind = vision_config.model_type
    if kind in VLLM_TOWERS:
        return None
    return (f"llava-hf export with a {kind} vision tower: transformers' LlavaForConditionalGeneration "
            "(and lmms-eval's llava_hf) load it; vLLM does not (its LLaVA takes only CLIP, SigLIP and "
            "Pixtral towers)")


# --- writing ---------------------------------------------------------------------------------------
def processor_image_size(image_processor: Any) -> dict[str, int]:
    """The square the image processor hands the ViT: ``crop_size`` when it crops (CLIP,
    DINOv2), else ``size`` (SigLIP resizes straight to ``{"height", "width"}``; no crop_size)."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop:
        return dict(crop)
    size = dict(getattr(image_processor, "size", None) or {})
    if "height" not in size or "width" not in size:
        raise ValueError(f"cannot tell the image size the ViT sees from {type(image_processor).__name__} "
                         f"(crop_size {crop}, size {size or None})")
    return {"height": size["height"], "width": size["width"]}


def _llava_processor(model: nn.Module, processor: LlavaCompareProcessor, chat_template: str | None) -> Any:
    """A ``LlavaProcessor`` that expands each ``<image>`` to exactly the model's token count."""
    from transformers import LlavaProcessor

    cfg = model.config
    strategy, extra = select_strategy(cfg.vision_config)
    hf_proc = LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                             patch_size=cfg.vision_config.patch_size, vision_feature_select_strategy=strategy,
                             num_additional_image_tokens=extra, chat_template=chat_template,
                             image_token=processor.image_token)
    size = processor_image_size(processor.image_processor)
    # LlavaProcessor's own count (transformers 4.x and vLLM compute it the same way)
    n = (size["height"] // cfg.vision_config.patch_size) * (size["width"] // cfg.vision_config.patch_size)
    n += extra - (1 if strategy == "default" else 0)
    if n != cfg.tokens_per_image:
        raise ValueError(f"LlavaProcessor would expand an image to {n} tokens, the model needs "
                         f"{cfg.tokens_per_image}; is the image processor's size the ViT's?")
    return hf_proc


def write_llava_hf(model: nn.Module, processor: LlavaCompareProcessor, out: Path, max_shard_size: str,
                    chat_template: str | None) -> None:
    """Weights (published names), config, generation config and processor files into ``out``."""
    from huggingface_hub import save_torch_state_dict

    cfg = model.config
    llava_cfg = llava_hf_config(cfg)
    llava_cfg.dtype = next(model.parameters()).dtype
    hf_proc = _llava_processor(model, processor, chat_template)  # its checks, before any write
    save_torch_state_dict(published_state_dict(model), out, max_shard_size=max_shard_size,
                          metadata={"format": "pt"})
    llava_cfg.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    hf_proc.save_pretrained(out)
    write_v4_compat(out)
    warning = client_warning(cfg.vision_config)
    if warning:
        log.warning(warning)


# --- files transformers 4.x reads too ----------------------------------------------------------------
def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _v4_text_config(config: dict[str, Any]) -> None:
    """transformers 4.x reads ``rope_theta`` / ``rope_scaling``, 5.x ``rope_parameters``: write both
    (a LLaMA-3 read by 4.x without them would silently run RoPE at 10,000)."""
    text = config.get("text_config", {})
    rope = text.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        text.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            text.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})


def _v4_tokenizer_config(config: dict[str, Any]) -> None:
    """transformers 5 names its tokenizers.json class ``TokenizersBackend`` and writes
    ``extra_special_tokens`` as a list; 4.x knows ``PreTrainedTokenizerFast`` and wants a dict
    of named tokens there (the list form is 4.x's ``additional_special_tokens``). 5.x reads both.
    Keys that are load-time state, not settings, are dropped."""
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        # 4.x's generic class also returns token_type_ids, which LLaVA's generate() refuses
        config.setdefault("model_input_names", ["input_ids", "attention_mask"])
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        if extra:
            config.setdefault("additional_special_tokens", extra)
        config["extra_special_tokens"] = dict(config.get("model_specific_special_tokens") or {})
    for key in ("backend", "is_local", "local_files_only"):  # load-time state, not tokenizer settings
        config.pop(key, None)


def write_v4_compat(out: Path) -> None:
    """Make the folder transformers 4.x (and vLLM on either) reads as 5.x does: the text config's
    RoPE in both spellings, a 4.x-readable ``tokenizer_config.json``, and the image processor in
    ``preprocessor_config.json`` (the published checkpoints' place, which 5.x reads too) instead of
    nested in ``processor_config.json`` (4.x would pass that dict as the processor's image processor)."""
    _edit_json(out / "config.json", _v4_text_config)
    if (out / "tokenizer_config.json").is_file():
        _edit_json(out / "tokenizer_config.json", _v4_tokenizer_config)
    proc_file = out / "processor_config.json"
    proc = json.loads(proc_file.read_text())
    nested = proc.pop("image_processor", None)
    if nested:
        image = {**nested, "processor_class": proc.get("processor_class", "LlavaProcessor")}
        if str(image.get("image_processor_type", "")).endswith("Pil"):  # 5.x's PIL twin; 4.x has one class
            image["image_processor_type"] = image["image_processor_type"].removesuffix("Pil")
        (out / "preprocessor_config.json").write_text(json.dumps(image, indent=2, sort_keys=True) + "\n")
        proc_file.write_text(json.dumps(proc, indent=2, sort_keys=True) + "\n")
