"""One home for loading: stage outputs, their ``checkpoint-N`` folders, export folders and hub ids.

A stage output folder (written by :mod:`llava_compare.train.outputs`) holds:

- ``config.json`` + processor/tokenizer files (always);
- ``llava_compare.json``: how to rebuild the base (the ``model:`` config with hub ids), the stage,
  the LoRA config, the recipe;
- ``model.safetensors``: the full base weights, only when the base cannot be re-fetched (a tiny
  model built from config) -- a 7B LLM is never copied, it is re-loaded from its hub id;
- ``compressor.safetensors``: the final compressor (always: it is what stage 1 produces);
- ``trainable.safetensors``: every parameter this stage trained (LoRA, compressor, ...);
- ``adapter/adapter_config.json``: the LoRA config, when the stage used LoRA (in a subfolder:
  transformers treats an ``adapter_config.json`` beside ``config.json`` as a PEFT-only folder).
A ``checkpoint-N`` folder inside it holds that step's ``trainable.safetensors`` (and
``model.safetensors``, a link to it: the name the Trainer's resume loads).

:func:`load` is the one loader (train's ``init_from``, export, eval, generate). Its one rule for
stage outputs: the model the stage started from (the base weights saved in the folder, else the
``init_from`` it was trained from, loaded by this same rule, else the base rebuilt from the
config), LoRA added as the stage added it, then the parameters the stage trained: those of
``checkpoint-N`` for a checkpoint (finished run or not), the final ones for the stage folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .data.conversation import ConversationBuilder
from .data.pipeline import data_builder
from .data.processor import LlavaCompareProcessor
from .model.attention import resolve_attn_implementation
from .model.build import DTYPES, build_model, quantization_config, quantized_device_map
from .model.lora import add_lora
from .model.modeling import LlavaCompareForConditionalGeneration
from .model.presets import stored_model_config
from .model.sharding import gathered, has_dtensor, is_zero3_partitioned

log = logging.getLogger(__name__)

META = "llava_compare.json"
TRAINABLE = "trainable.safetensors"
COMPRESSOR = "compressor.safetensors"
ADAPTER_DIR = "adapter"


def unwrap(model: nn.Module) -> LlavaCompareForConditionalGeneration:
    """The plain model inside a ``PeftModel`` (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_named(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load trained tensors by parameter name; refuse names the model does not have."""
    params = dict(model.named_parameters())
    missing = set(tensors) - set(params)
    if missing:
        raise KeyError(f"checkpoint has parameters the model lacks: {sorted(missing)[:5]}...")
    if has_dtensor(model):  # FSDP2: each rank keeps its shard of the full tensors (public torch API)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    # ZeRO-3: gather only the parameters being loaded; rank 0's values go back to every partition
    with gathered([params[n] for n in sorted(tensors)], modify=True):
        model.load_state_dict(tensors, strict=False)



# --- what a reference is ------------------------------------------------------------------------
def _meta_file(path: Path) -> Path | None:
    """The ``llava_compare.json`` that describes a local folder: its own (stage output, export),
    or its stage's for a ``checkpoint-N`` folder; None when there is none."""
    if (path / META).is_file():
        return path / META
    if (path / TRAINABLE).is_file() and (path.parent / META).is_file():
        return path.parent / META
    return None


def read_meta(ref: str | Path) -> dict[str, Any]:
    """``llava_compare.json`` of a stage output, of the stage a ``checkpoint-N`` folder belongs to,
    of an export folder or of a hub repo ({} when there is none), without loading any weights."""
    path = Path(ref)
    meta_file = _meta_file(path)
    if meta_file is not None:
        return _with_model_for_kinds(json.loads(meta_file.read_text()))
    if path.exists():
        return {}
    try:  # a hub id: cached or downloaded like the rest of the model files
        from huggingface_hub import hf_hub_download

        return _with_model_for_kinds(json.loads(Path(hf_hub_download(str(ref), META)).read_text()))
    except Exception:  # noqa: BLE001  (not a repo, no such file, offline and not cached)
        return {}


def _with_model_for_kinds(meta: dict[str, Any]) -> dict[str, Any]:
    return {**meta, "model": stored_model_config(meta["model"])} if "model" in meta else meta


def is_export(path: str | Path) -> bool:
    """True for a local folder this module wrote (its llava_compare.json has an ``export`` entry)."""
    return (Path(path) / META).is_file() and "export" in read_meta(path)


def resolve_checkpoint(ref: str | Path) -> tuple[Path, Path | None]:
    """(stage output folder, checkpoint-N folder or None) for a stage output or a checkpoint."""
    path = Path(ref)
    if (path / META).is_file() and not is_export(path):
        return path, None
    if (path / TRAINABLE).is_file() and (path.parent / META).is_file():
        return path.parent, path
    raise FileNotFoundError(
        f"{ref} is neither a llava_compare stage output (a folder with {META}) nor one of its "
        f"checkpoint-N folders ({TRAINABLE} in a stage output folder)")


# --- the loader ---------------------------------------------------------------------------------
def load(ref: str | Path, merge: bool = True, load_in_4bit: bool = False,
         runtime: dict[str, Any] | None = None) -> tuple[nn.Module, LlavaCompareProcessor, dict[str, Any]]:
    """(model, processor, meta) of a stage output, one of its ``checkpoint-N`` folders, an export
    folder or a hub id; the model in eval mode. ``meta`` is the folder's ``llava_compare.json``
    ({} when there is none).

    With ``merge`` LoRA is merged into the LLM; without, a LoRA stage gives a ``PeftModel``
    (exports are always merged). ``load_in_4bit`` loads a stage's LLM in 4-bit NF4 (QLoRA on
    top of a previous stage). ``runtime`` (``{"dtype": ..., "attn_implementation": ...}``) replaces
    those keys of a stage's saved ``model:`` config: the next stage's choices (``train.init_from``).
    """
    path = Path(ref)
    if (path / META).is_file() and not is_export(path) or (path / TRAINABLE).is_file():
        stage_dir, ckpt = resolve_checkpoint(path)
        model, processor, meta = _load_stage(stage_dir, ckpt, merge, load_in_4bit, runtime)
    else:  # an export folder or a hub id (native, remote-code, llava-hf, or base + adapter/)
        model, processor = _load_exported(ref)
        meta = read_meta(ref)
    return model.eval(), processor, meta


def _load_stage(stage_dir: Path, ckpt: Path | None, merge: bool, load_in_4bit: bool,
                runtime: dict[str, Any] | None = None) -> tuple[nn.Module, LlavaCompareProcessor, dict[str, Any]]:
    meta = read_meta(stage_dir)
    finished = (stage_dir / COMPRESSOR).is_file()
    if ckpt is None and not finished:
        raise FileNotFoundError(f"{stage_dir} has not finished (no {COMPRESSOR}); pass one of its "
                                "checkpoint-N folders instead")
    model = _start_model(stage_dir, meta, load_in_4bit, runtime)
    if finished and ckpt is None:  # the stage's own product (also right when it was not trained)
        with gathered(model.compressor.parameters(), modify=True):  # ZeRO-3: partitioned while loading
            model.compressor.load_state_dict(load_file(str(stage_dir / COMPRESSOR)))
    if meta.get("stage", {}).get("train_llm") == "lora":
        model = add_lora(model, meta["peft"])
    trained = (ckpt or stage_dir) / TRAINABLE
    if trained.is_file():
        load_named(model, load_file(str(trained)))
    if merge and hasattr(model, "merge_and_unload"):
        model = merge_lora(model)
    proc_dir = ckpt if ckpt is not None and (ckpt / "processor_config.json").is_file() else stage_dir
    return model, LlavaCompareProcessor.from_pretrained(proc_dir), meta


def merge_lora(model: nn.Module) -> nn.Module:
    """LoRA merged into the base weights. Under ZeRO-3 (a stage loaded partitioned by ``init_from``)
    each adapted layer is gathered alone for its merge, never the whole LLM at once."""
    if not is_zero3_partitioned(model):
        return model.merge_and_unload()
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            with gathered(module.parameters(), modify=True):
                module.merge()
    return model.unload()  # the merged base layers, adapters removed


def _start_model(stage_dir: Path, meta: dict[str, Any], load_in_4bit: bool,
                 runtime: dict[str, Any] | None = None) -> nn.Module:
    """The model a stage started from, before its LoRA (see the module docstring)."""
    model_cfg = {**meta["model"], **(runtime or {}),
                 "llm": {**meta["model"]["llm"], "load_in_4bit": load_in_4bit}}
    if (stage_dir / "model.safetensors").is_file() or (stage_dir / "model.safetensors.index.json").is_file():
        return _from_saved_base(stage_dir, model_cfg, runtime is not None)
    init_from = meta.get("init_from")
    if init_from and ((Path(init_from) / META).is_file() or (Path(init_from) / TRAINABLE).is_file()):
        return load(init_from, merge=True, load_in_4bit=load_in_4bit, runtime=runtime)[0]
    if init_from:
        log.warning("%s was trained from %s, which is gone: rebuilding its base from the config "
                    "(anything %s trained besides the compressor is missing)", stage_dir, init_from, init_from)
    init = model_cfg.get("compressor_init")
    model, _ = build_model({**model_cfg, "compressor_init": init if init and Path(init).is_file() else None})
    return model


def _from_saved_base(stage_dir: Path, model_cfg: dict[str, Any], apply_runtime: bool) -> nn.Module:
    """A base saved whole (built from config: no hub id to re-load it from); with
    ``apply_runtime``, in ``model_cfg``'s dtype and attention kernel instead of as saved."""
    quant = quantization_config(model_cfg)
    placement = {} if quant is None else {"device_map": quantized_device_map()}  # this rank's GPU
    if not apply_runtime:
        return LlavaCompareForConditionalGeneration.from_pretrained(stage_dir, quantization_config=quant, **placement)
    attn = resolve_attn_implementation(model_cfg.get("attn_implementation", "auto"))
    model = LlavaCompareForConditionalGeneration.from_pretrained(
        stage_dir, quantization_config=quant, dtype=DTYPES[model_cfg.get("dtype", "float32")], **placement)
    # the ViT has no FlashAttention-2 path here: it keeps sdpa, as build_model sets it
    model.set_attn_implementation({"text_config": attn,
                                   "vision_config": "sdpa" if attn == "flash_attention_2" else attn})
    return model


# --- loading an export -----------------------------------------------------------------------------
def _load_exported(ref: str | Path) -> tuple[nn.Module, LlavaCompareProcessor]:
    """Model + processor from an export folder or hub id, LoRA merged, in eval mode.

    A ``llava-hf`` export's ``LlavaProcessor`` is wrapped as a ``LlavaCompareProcessor`` (same
    tokenizer and image processor, ``image_seq_length`` tokens per image) so ``generate_answer``
    and ``evaluate`` build exactly the ids they build for the training model.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import llava_compare  # noqa: F401  (registers the Auto classes)

    info = read_meta(ref).get("export", {})
    model = AutoModelForImageTextToText.from_pretrained(str(ref))
    processor = AutoProcessor.from_pretrained(str(ref))
    if info.get("adapter"):
        from peft import PeftModel

        adapter = Path(ref) / info["adapter"]
        if not Path(ref).is_dir():  # a hub id: fetch the subfolder (peft's offline subfolder lookup is unreliable)
            from huggingface_hub import snapshot_download

            adapter = Path(snapshot_download(str(ref), allow_patterns=[f"{info['adapter']}/*"])) / info["adapter"]
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if not isinstance(processor, LlavaCompareProcessor):
        processor = LlavaCompareProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                          tokens_per_image=model.config.image_seq_length,
                                          image_token=processor.image_token)
    return model.eval(), processor


# --- where inference runs (eval, generate: --device) ---------------------------------------------
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be {DEVICE_CHOICES}; got {spec!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: this machine has no CUDA device; use --device cpu (or auto)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def device_arg(spec: str) -> str:
    """argparse ``type=`` for ``--device``: a bad or unavailable device is a one-line usage error."""
    import argparse

    try:
        resolve_device(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return spec


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on a GPU that supports it (half the memory, tensor cores); None keeps the weights' dtype."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def place_for_inference(model: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """``model`` on ``device`` (in ``dtype`` when given; a 4-bit model keeps its dtypes)."""
    if dtype is None or getattr(model, "is_quantized", False):
        return model.to(device)
    return model.to(device=device, dtype=dtype)


def to_device(model: nn.Module, spec: str = "auto") -> nn.Module:
    """``model`` where ``--device spec`` says (:func:`resolve_device`), in bf16 on a GPU that has it."""
    device = resolve_device(spec)
    return place_for_inference(model, device, inference_dtype(device))


# --- how the model was prompted in training -----------------------------------------------------
def training_config(model_dir: str | Path) -> dict[str, Any]:
    """The resolved training config saved with a stage output, one of its checkpoints or an
    export ({} for other folders)."""
    return read_meta(model_dir).get("config", {})


def builder_for(model_dir: str | Path, processor: LlavaCompareProcessor,
                image_marker: str | None = None) -> ConversationBuilder:
    """The conversation builder the model was trained with (template, markers, system prompt)."""
    return data_builder(training_config(model_dir).get("data", {}), processor, image_marker)
