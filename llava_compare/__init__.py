"""llava_compare: fine-tune multi-image LLaVA-style models that compare images.

Layers (``pyproject.toml`` [tool.importlinter], checked in ``make test``): ``cli`` > ``validate`` |
``demo`` (the demo's work around a run, through ``train``'s hooks) > ``train`` > ``eval`` | ``ship`` | ``generate`` > ``loading`` > ``model`` > ``data`` > ``ranks``
(where this process sits in a torchrun job) | ``overrides`` (the command line's override grammar);
``synth`` uses ``data`` only; ``train`` imports neither ``demo`` nor ``synth``.

Importing the package registers ``LlavaCompareConfig`` / ``LlavaCompareForConditionalGeneration``
/ ``LlavaCompareProcessor`` with transformers' Auto classes.
"""

from .model import (  # noqa: F401  (import registers the Auto classes)
    ImageTokenMismatchError,
    LlavaCompareConfig,
    LlavaCompareForConditionalGeneration,
    LlavaCompareProcessor,
)

__version__ = "0.1.0"
