"""``LlavaCompareProcessor``: tokenizer + image processor, image-token expansion.

Each ``<image>`` becomes exactly ``tokens_per_image`` placeholder ids; that number comes from the
model config's compressor (passed in at construction and saved with the processor), never from a
constant here.

One route to model inputs: ``processor(...)`` encodes prompt text (``text=``, e.g. a rendered chat
template) or a conversation (``conversation=`` + the ``ConversationBuilder`` the model is trained
with) -- the latter for training (with the assistant-only ``labels`` on top) and for inference
(``add_generation_prompt=True``: generation, option scoring).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers import BatchFeature, ProcessorMixin

from .checks import load_image
from .padding import IGNORE, pad_rows
from .sample import IMAGE_PLACEHOLDER


class LlavaCompareProcessor(ProcessorMixin):
    """Turns interleaved text (``<image>`` placeholders) and images into model inputs."""

    def __init__(self, image_processor=None, tokenizer=None, tokens_per_image: int = 1,
                 image_token: str = IMAGE_PLACEHOLDER, chat_template: str | None = None, **kwargs):
        self.tokens_per_image = int(tokens_per_image)
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {image_token!r} token; add it as a special token")

    # --- ids -------------------------------------------------------------------------------------
    def expand_image_tokens(self, ids: Sequence[int], labels: Sequence[int] | None = None
                            ) -> tuple[list[int], list[int] | None]:
        """Repeat every image id ``tokens_per_image`` times (labels there become ``IGNORE``)."""
        out_ids: list[int] = []
        out_labels: list[int] | None = [] if labels is not None else None
        for i, tok in enumerate(ids):
            n = self.tokens_per_image if tok == self.image_token_id else 1
            out_ids.extend([tok] * n)
            if out_labels is not None:
                out_labels.extend([IGNORE] * n if n > 1 or tok == self.image_token_id else [labels[i]])
        return out_ids, out_labels

    def preprocess_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Paths or PIL images -> ``[N_img, 3, H, W]`` float pixel values. A missing, undecodable or
        oversized image raises ``DataError`` naming the file (the checks training runs)."""
        pil = [load_image(im) for im in images]
        return self.image_processor(images=pil, return_tensors="pt")["pixel_values"]

    # --- the entry point -------------------------------------------------------------------------
    def __call__(self, text: str | list[str] | None = None, images: Sequence[Any] | None = None,
                 return_tensors: str | None = "pt", padding: bool | str = True,
                 add_special_tokens: bool = True, *, conversation: Any = None, builder: Any = None,
                 add_generation_prompt: bool = False, **kwargs: Any) -> BatchFeature:
        """Model inputs from prompts that contain ``<image>`` (``text``, left-padded into a batch) or
        from one ``conversation`` (a ``Sample``) rendered by ``builder`` (a ``ConversationBuilder``).

        Both give ``input_ids`` with each image expanded to ``tokens_per_image`` ids and
        ``attention_mask``; ``pixel_values`` ``[N_img, 3, H, W]`` when ``images`` are given (in
        reading order). A whole conversation also gives ``labels`` (``IGNORE`` except on assistant tokens,
        the training target); with ``add_generation_prompt`` it stops after the last assistant
        header (the input to ``generate()`` and to option scoring) and has no labels.
        """
        if conversation is not None:
            return self._encode_conversation(conversation, builder, images, add_generation_prompt, return_tensors)
        texts = [text] if isinstance(text, str) else list(text or [])
        images = list(images or [])
        n_ph = sum(t.count(self.image_token) for t in texts)
        if n_ph != len(images):
            raise ValueError(f"prompt has {n_ph} {self.image_token} placeholders but "
                             f"{len(images)} images were given")
        enc = self.tokenizer(texts, add_special_tokens=add_special_tokens, **kwargs)
        rows = [self.expand_image_tokens(ids)[0] for ids in enc["input_ids"]]
        # Left padding: generation appends at the right, so prompts must end aligned.
        padded = pad_rows(rows, self.tokenizer.pad_token_id, "left")
        data: dict[str, Any] = {k: padded[k].tolist() for k in ("input_ids", "attention_mask")}
        if images:
            data["pixel_values"] = self.preprocess_images(images)
        return BatchFeature(data, tensor_type=return_tensors)

    def _encode_conversation(self, conversation: Any, builder: Any, images: Sequence[Any] | None,
                             add_generation_prompt: bool, return_tensors: str | None) -> BatchFeature:
        if builder is None:
            raise ValueError("processor(conversation=...) needs builder=: the ConversationBuilder the model "
                             "is trained with (template, image markers, system prompt)")
        if add_generation_prompt:
            ids, labels = self.expand_image_tokens(builder.encode_prompt(conversation))
        else:
            enc = builder.encode(conversation)
            ids, labels = self.expand_image_tokens(enc.input_ids, enc.labels)
        data: dict[str, Any] = {"input_ids": [ids], "attention_mask": [[1] * len(ids)]}
        if labels is not None:
            data["labels"] = [labels]
        if images:
            data["pixel_values"] = self.preprocess_images(images)
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

