"""Model: ``config``, ``compressors`` (registry; owns tokens per image), ``modeling`` (the VLM),
``build`` (hub ids, folders, tiny configs), ``lora`` (where LoRA attaches), ``projector_import``
(LLaVA mm_projector files), ``tiny_tokenizer``. Importing it registers the Auto classes.

Neighbours: imports only ``data`` (the processor and the ``<image>`` placeholder); ``loading`` and
the commands above build on it.
"""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .config import LlavaCompareConfig
from .modeling import ImageTokenMismatchError, LlavaCompareForConditionalGeneration
from ..data.processor import LlavaCompareProcessor

AutoConfig.register("llava_compare", LlavaCompareConfig, exist_ok=True)
AutoModelForImageTextToText.register(LlavaCompareConfig, LlavaCompareForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlavaCompareConfig, LlavaCompareProcessor, exist_ok=True)

__all__ = ["LlavaCompareConfig", "LlavaCompareForConditionalGeneration", "LlavaCompareProcessor",
           "ImageTokenMismatchError"]
