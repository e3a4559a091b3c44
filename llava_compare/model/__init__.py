"""Model package: config, compressors, the VLM, builders. Importing it registers the Auto classes."""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .config import LlavaCompareConfig
from .modeling import ImageTokenMismatchError, LlavaCompareForConditionalGeneration
from ..data.processor import LlavaCompareProcessor

AutoConfig.register("llava_compare", LlavaCompareConfig, exist_ok=True)
AutoModelForImageTextToText.register(LlavaCompareConfig, LlavaCompareForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlavaCompareConfig, LlavaCompareProcessor, exist_ok=True)

__all__ = ["LlavaCompareConfig", "LlavaCompareForConditionalGeneration", "LlavaCompareProcessor",
           "ImageTokenMismatchError"]
