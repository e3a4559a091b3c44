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
from .data.processor import LlavaCompareProcessor
from .model.build import build_model, quantization_config
from .model.lora import add_lora
from .model.modeling import LlavaCompareForConditionalGeneration

log = logging.getLogger(__name__)

META = "llava_compare.json"
TRAINABLE = "trainable.safetensors"
COMPRESSOR = "compressor.safetensors"
ADAPTER_DIR = "adapter"


def unwrap(model: nn.Module) -> LlavaCompareForConditionalGeneration:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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


# --- stage outputs and checkpoints ------------------------------------------------------------------------
def is_export(path: str | Path) -> bool:
    """True for a folder this module wrote (its llava_compare.json has an ``export`` entry)."""
    meta = Path(path) / META
    return meta.is_file() and "export" in json.loads(meta.read_text())


def read_meta(ref: str | Path) -> dict[str, Any]:
    """``llava_compare.json`` of a local folder or a hub repo ({} when there is none)."""
    path = Path(ref)
    if (path / META).is_file():
        return json.loads((path / META).read_text())
    if path.exists():
        return {}
    try:  # a hub id: cached or downloaded like the rest of the model files
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(ref), META)).read_text())
    except Exception:  # noqa: BLE001  (not a repo, no such file, offline and not cached)
        return {}


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


def _unfinished_base(stage_dir: Path) -> nn.Module:
    """The model a not-yet-finished stage started from, with LoRA added as the stage adds it."""
    meta = json.loads((stage_dir / META).read_text())
    if (stage_dir / "model.safetensors").is_file() or (stage_dir / "model.safetensors.index.json").is_file():
        model = LlavaCompareForConditionalGeneration.from_pretrained(stage_dir)
    elif meta.get("init_from") and (Path(meta["init_from"]) / META).is_file():
        model, _ = load_trained(meta["init_from"], merge=True)
    else:
        model, _ = build_model({**meta["model"], "compressor_init": None})
    if meta.get("stage", {}).get("train_llm") == "lora":
        model = add_lora(model, meta["peft"])
    return model


def load_stage(ref: str | Path, merge: bool = True) -> tuple[nn.Module, LlavaCompareProcessor, Path]:
    """(model, processor, stage folder) of a stage output or checkpoint-N folder, in eval mode.

    With ``merge`` LoRA is merged into the LLM; without, a LoRA stage gives a ``PeftModel``.
    A checkpoint of a run that has not finished yet (no ``compressor.safetensors`` / ``adapter/``
    in its stage folder) is rebuilt from the stage's start model plus the checkpoint's parameters.
    """
    stage_dir, ckpt = resolve_checkpoint(ref)
    if (stage_dir / COMPRESSOR).is_file():
        model, processor = load_trained(stage_dir, merge=False)
    elif ckpt is not None:
        model = _unfinished_base(stage_dir)
        processor = LlavaCompareProcessor.from_pretrained(ckpt if (ckpt / "processor_config.json").is_file()
                                                          else stage_dir)
    else:
        raise FileNotFoundError(f"{stage_dir} has not finished (no {COMPRESSOR}); export one of its "
                                "checkpoint-N folders instead")
    if ckpt is not None:
        load_named(model, load_file(str(ckpt / TRAINABLE)))
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), processor, stage_dir


# --- loading an export -----------------------------------------------------------------------------
def load_exported(ref: str | Path) -> tuple[nn.Module, LlavaCompareProcessor]:
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


# --- inference: any of the above -------------------------------------------------------------------
def load_for_inference(ref: str | Path) -> tuple[nn.Module, LlavaCompareProcessor]:
    """A model and processor from a stage output folder, one of its ``checkpoint-N`` folders,
    an export folder or a hub id. LoRA is merged; the model is in eval mode."""
    path = Path(ref)
    if (path / META).is_file() and not is_export(path):  # a finished stage
        model, processor = load_trained(path, merge=False)
    elif (path / TRAINABLE).is_file() and (path.parent / META).is_file():  # a mid-run checkpoint
        model, processor = load_trained(path.parent, merge=False)
        load_named(model, load_file(str(path / TRAINABLE)))
    else:  # an export folder or a hub id (native, remote-code, llava-hf, or base + adapter/)
        return load_exported(ref)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), processor


def training_config(model_dir: str | Path) -> dict[str, Any]:
    """The resolved training config saved with a stage output ({} for other folders)."""
    for folder in (Path(model_dir), Path(model_dir).parent):  # a stage output or one of its checkpoints
        meta = folder / "llava_compare.json"
        if meta.is_file():
            return json.loads(meta.read_text()).get("config", {})
    if not Path(model_dir).exists():  # a hub id: its export carries llava_compare.json
        return read_meta(model_dir).get("config", {})
    return {}


def builder_for(model_dir: str | Path, processor: LlavaCompareProcessor,
                image_marker: str | None = None) -> ConversationBuilder:
    """The conversation builder the model was trained with (template, markers, system prompt)."""
    data = training_config(model_dir).get("data", {})
    marker_on = (image_marker or data.get("image_marker", "interleaved")) == "interleaved"
    return ConversationBuilder(processor.tokenizer, data.get("conversation_template", "auto"),
                               data.get("marker_template", "Image {k}: ") if marker_on else None,
                               data.get("system_prompt"))
