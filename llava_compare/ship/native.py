"""The ``native`` export format: ``LlavaCompareForConditionalGeneration`` safetensors, config.json
with ``auto_map``, the processor, the standalone remote code, and (``--no-merge``) a PEFT adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..data.processor import LlavaCompareProcessor
from ..loading import ADAPTER_DIR, unwrap
from .remote_code import AUTO_MAP, write_remote_code


def _update_json(path: Path, **entries: Any) -> None:
    data = json.loads(path.read_text())
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_native(model: nn.Module, processor: LlavaCompareProcessor, out: Path, max_shard_size: str,
                  chat_template: str | None, repo_id: str | None) -> str | None:
    """Weights + config (auto_map) + processor + standalone code. Returns the adapter subfolder."""
    adapter = None
    if hasattr(model, "peft_config"):  # --no-merge: adapter in a subfolder, the base beside it
        adapter = ADAPTER_DIR
        # the base this adapter belongs to is the export itself (the hub repo once pushed)
        model.peft_config["default"].base_model_name_or_path = repo_id or str(out.resolve())
        model.save_pretrained(str(out / adapter), save_embedding_layers=False)  # no hub look-ups
        (out / adapter / "README.md").unlink(missing_ok=True)  # peft's empty template; README.md covers it
        model = model.unload()  # the base without LoRA layers (trained compressor included)
    base = unwrap(model)
    base.config.auto_map = dict(AUTO_MAP)
    base.save_pretrained(out, max_shard_size=max_shard_size)
    processor.chat_template = chat_template
    processor.save_pretrained(out)
    _update_json(out / "processor_config.json", auto_map={"AutoProcessor": AUTO_MAP["AutoProcessor"]})
    write_remote_code(out)
    return adapter
