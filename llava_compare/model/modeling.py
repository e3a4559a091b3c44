"""The multi-image VLM: vision tower (CLIP, SigLIP, DINOv2) -> compressor -> causal LM.

Follows transformers' LLaVA conventions (``pixel_values``, ``image_token_id``,
``vision_feature_layer``, ``get_image_features``, ``masked_scatter``) so an exported model feels
native. Images of a whole batch travel flattened as ``[N_img, 3, H, W]``, separate from the text
batch ``[B, S]``; the k-th image fills the k-th run of placeholder tokens in reading order.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..data.padding import IGNORE
from .compressors import get_compressor
from .config import LlavaCompareConfig
from .sharding import is_zero3_param, is_zero3_partitioned
from .vision import patch_features, tower_from_config, truncate_tower


def _mixed_autocast(params: list[nn.Parameter], ref: torch.Tensor) -> Any:
    """Autocast to the half dtype when a module mixes fp32 (trained) and half (frozen) weights,
    as a bf16 run with some ViT layers trained does (``stages.keep_trainable_fp32``): the layers
    then meet in bf16 even without the Trainer's own autocast (``optim.bf16=false``)."""
    dtypes = {p.dtype for p in params}
    half = sorted(dtypes & {torch.bfloat16, torch.float16}, key=str)
    if len(dtypes) > 1 and half:
        return torch.autocast(ref.device.type, dtype=half[0])
    return contextlib.nullcontext()


class ImageTokenMismatchError(ValueError):
    """Raised when the number of image placeholder tokens does not match the image features."""


def merge_image_features(input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor,
                         image_token_id: int) -> torch.Tensor:
    """Scatter ``[N_img, T, D]`` image tokens, in reading order, into the ``image_token_id``
    positions of ``[B, S, D]`` embeddings; :class:`ImageTokenMismatchError` when the counts differ.
    Module-level so callers holding another LLaVA-layout model (a llava-hf export) merge the same way."""
    mask = input_ids == image_token_id  # [B, S]
    n_tokens, n_feats = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
    if n_tokens != n_feats:
        raise ImageTokenMismatchError(
            f"image placeholder tokens in input_ids: {n_tokens}, image feature tokens: {n_feats} "
            f"({image_features.shape[0]} images x {image_features.shape[1]} tokens per image). "
            "Each <image> must expand to exactly tokens_per_image placeholder ids and every "
            "image must have a placeholder; build inputs with LlavaCompareProcessor."
        )
    feats = image_features.to(inputs_embeds.dtype).reshape(-1, inputs_embeds.shape[-1])
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), feats)


class LlavaComparePreTrainedModel(PreTrainedModel):
    config_class = LlavaCompareConfig
    config: LlavaCompareConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["CLIPEncoderLayer", "SiglipEncoderLayer", "Dinov2Layer", "LlamaDecoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only the compressor is ours; the sub-models initialise themselves. Small normal init
        # (std 0.02, LLaVA's) keeps the projector's output near the LLM's embedding scale.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class LlavaCompareForConditionalGeneration(LlavaComparePreTrainedModel, GenerationMixin):
    """ViT + compressor + LLM with a KV-cached ``generate()`` over interleaved multi-image prompts."""

    #: fp32 logits per chunk of the labelled-position loss (2**26: 256 MiB, ~2k positions at a
    #: 32k vocabulary, ~500 at 128k); 0 or None computes the loss in one shot. Set per instance.
    loss_chunk_elements: int | None = 1 << 26

    def __init__(self, config: LlavaCompareConfig, vision_tower: nn.Module | None = None,
                 language_model: nn.Module | None = None):
        """Sub-models given here (already loaded with ``from_pretrained``) are used as they are:
        neither built at random first nor re-initialised. The others are built from ``config``."""
        super().__init__(config)
        # One config object per tower: a loaded tower's own config becomes the sub-config, so edits
        # through either path (the ViT cut, embedding resizes, set_attn_implementation, which
        # dispatches a sub-config's kernel only to the sub-model that holds that very object) reach
        # both. A tower built here from its sub-config holds that object already.
        if vision_tower is not None:
            self.config.vision_config = vision_tower.config
        if language_model is not None:
            self.config.text_config = language_model.config
        self.vision_tower = (vision_tower if vision_tower is not None
                             else tower_from_config(config.vision_config))
        self._cut_vision_tower()
        self.compressor = get_compressor(
            config.compressor, config.vision_feature_dim, config.text_config.hidden_size,
            config.patch_grid,
        )
        # Built from config directly (as tower_from_config): the same init under every dist=.
        self.language_model = (language_model if language_model is not None
                               else MODEL_FOR_CAUSAL_LM_MAPPING[type(config.text_config)](config.text_config))
        # A sub-model that arrives in ZeRO-3 partitions (from_pretrained under zero.Init) holds its
        # final values; transformers' ZeRO-3 init flags its modules _is_hf_initialized on rank 0
        # only, so post_init() below would re-initialise the other ranks' empty partitions (rank 1
        # died on an Embedding's padding row: "index 0 is out of bounds for dimension 0 with size
        # 0"). Flag them on every rank, as on rank 0.
        for part in (self.vision_tower, self.language_model):
            if is_zero3_partitioned(part):
                for module in part.modules():
                    module._is_hf_initialized = True
        self.post_init()

    def _cut_vision_tower(self) -> None:
        """Run the ViT only up to the deepest ``vision_feature_layer``: the layers above are cut
        (after the tower is built whole, so a tiny tower keeps its seeded weights) and the config
        says what is left -- ``num_hidden_layers`` and the feature layers as absolute indices --
        so save / from_pretrained / the llava-hf export build the same cut tower. A checkpoint
        saved whole loads cut too: the dropped layers' weights are then unused keys."""
        self.config.vision_feature_layer = truncate_tower(self.vision_tower, self.config.vision_feature_layer)

    # --- embeddings plumbing, delegated so resize_token_embeddings / peft / generate work ----------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def is_distributed_loading_by_transformers(self) -> bool:
        """The Trainer's public flag for a model that already owns its placement and gradient
        reduction (it then neither wraps it in DDP nor shards it again). Also true once our
        FSDP2 path (``train/fsdp.py``) has sharded the model, which is the same contract."""
        return bool(getattr(self, "sharded_by_fsdp2", False)) or super().is_distributed_loading_by_transformers

    @property
    def tokens_per_image(self) -> int:
        return self.compressor.num_tokens

    # --- vision -------------------------------------------------------------------------------
    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ViT hidden state(s) ``vision_feature_layer`` without CLS/registers: ``[N_img, P, D_vis]``
        (``D_vis`` = hidden size x number of selected layers)."""
        params = list(self.vision_tower.parameters())
        frozen = not any(p.requires_grad for p in params)
        dtype = params[0].dtype
        # A frozen tower needs no autograd graph: saves activations memory on every step.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen), _mixed_autocast(params, pixel_values):
            return patch_features(self.vision_tower, pixel_values.to(dtype), self.config.vision_feature_layer,
                                  self.config.image_size)

    def get_image_features(self, pixel_values: torch.Tensor | None = None,
                           vision_features: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens for the LLM: ``[N_img, T_img, D_llm]``.

        ``vision_features`` (``[N_img, P, D_vis]``) skips the ViT, e.g. when read from a cache.
        """
        return self._image_tokens(pixel_values, vision_features)

    def _image_tokens(self, pixel_values: torch.Tensor | None, vision_features: torch.Tensor | None = None
                      ) -> torch.Tensor:
        # What forward calls: the public get_image_features is an FSDP2 entry point of its own
        # (train/fsdp.py), whose hooks would reshard the root's weights mid-forward.
        if vision_features is None:
            vision_features = self.get_vision_features(pixel_values)
        comp_dtype = next(self.compressor.parameters()).dtype
        return self.compressor(vision_features.to(comp_dtype))

    def merge_image_features(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                             image_features: torch.Tensor) -> torch.Tensor:
        """Scatter ``[N_img, T, D]`` into the placeholder positions of ``[B, S, D]``."""
        return merge_image_features(input_ids, inputs_embeds, image_features, self.config.image_token_id)

    def embed_inputs(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``[B, S, D]`` with ``image_features`` (``[N_img, T, D]``) scattered in,
        as ``forward`` builds them: for callers that reuse image features across rows (option
        scoring). One method, so a sharded model (FSDP2) can gather its embeddings for it."""
        embeds = self.get_input_embeddings()(input_ids)
        return embeds if image_features is None else self.merge_image_features(input_ids, embeds, image_features)

    def _dummy_image_features(self, ref: torch.Tensor) -> torch.Tensor:
        """Run one blank image so every rank touches the vision path (ZeRO-3/FSDP/DDP never wait
        on a rank whose batch was text-only). The result is multiplied by 0 by the caller."""
        size = self.config.image_size
        blank = torch.zeros(1, 3, size, size, device=ref.device)
        return self._image_tokens(blank)

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,  # a transformers Cache (generate() passes it); never in training
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        vision_features: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        sample_ids: Any = None,  # the collator's ids, for error messages: not a model input
        return_logits: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Standard causal-LM forward with images.

        With ``labels``, the LM head runs only where a label exists (assistant tokens): logits at
        image and prompt positions are never needed, and at a 32k vocabulary they are a large share
        of the step. The loss is computed in chunks of positions (``loss_chunk_elements``), so the
        fp32 logits of all labelled positions never exist at once. ``logits`` then holds
        ``[N_labelled, V]`` when ``return_logits`` (default: in eval mode, where option scoring
        reads them), else None; without labels, ``[B, S, V]``.

        Packed input (the collator's flattened row ``[1, T]``): ``position_ids`` restart at 0 per
        sample and no ``attention_mask``; transformers then isolates the samples itself (sdpa, eager
        and flex from ``position_ids``; FlashAttention-2 from the ``cu_seq_lens_*`` kwargs, which
        pass through ``kwargs``). That needs no KV cache, so the cache is off unless asked for, and
        always off in training: the LLM's own config defaults to ``use_cache=True``.
        """
        if self.training and (use_cache or cache is not None):
            raise ValueError("a KV cache in a training forward would let packed samples attend to "
                             "each other; call generate() / eval() for cached decoding")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, S, D]
        has_images = pixel_values is not None or vision_features is not None
        if has_images:
            feats = self._image_tokens(pixel_values, vision_features)  # [N_img, T, D]
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, feats)
        elif self.training and torch.is_grad_enabled():
            inputs_embeds = inputs_embeds + 0.0 * self._dummy_image_features(inputs_embeds).sum()

        decoder = self.language_model.get_decoder()
        out = decoder(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=bool(use_cache), **kwargs,
        )
        hidden = out.last_hidden_state  # [B, S, D]
        lm_head = self.get_output_embeddings()
        if labels is None:
            keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
            return CausalLMOutputWithPast(logits=lm_head(hidden[:, keep]), cache=out.cache)
        if return_logits is None:
            return_logits = not self.training  # eval callers (option scoring) read them
        loss, logits = self._labelled_loss(hidden, labels, lm_head, num_items_in_batch, return_logits)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)

    def _labelled_loss(self, hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module,
                       num_items_in_batch: int | torch.Tensor | None, return_logits: bool
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`labelled_loss` with this model's chunk size (``loss_chunk_elements`` fp32 logits
        per chunk, at least one position)."""
        vocab = lm_head.out_features if hasattr(lm_head, "out_features") else self.config.text_config.vocab_size
        chunk_rows = max(1, self.loss_chunk_elements // vocab) if self.loss_chunk_elements else None
        return labelled_loss(hidden, labels, lm_head, num_items_in_batch, chunk_rows, return_logits)


def labelled_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module,
                  num_items_in_batch: int | torch.Tensor | None, chunk_rows: int | None,
                  return_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next-token CE over labelled positions only, ``chunk_rows`` positions at a time (None: all
    at once). Summed and divided by the number of labelled tokens in the whole accumulated batch
    when the Trainer passes it, so gradient accumulation gives the same update as one large batch.

    Returns (loss, logits ``[N_labelled, V]`` in the head's dtype, or None unless ``return_logits``).
    """
    shift_labels = labels[:, 1:]  # position t predicts token t+1
    sel = shift_labels != IGNORE  # [B, S-1]
    rows, target = hidden[:, :-1][sel], shift_labels[sel]  # [N, D], [N]
    weight = getattr(lm_head, "weight", None)
    logits = None
    if return_logits or (weight is not None and is_zero3_param(weight)):
        # One head call, then only the fp32 upcast + CE in chunks: the caller wants the logits,
        # or ZeRO-3 would all-gather the whole head weight again for every chunk's call (and
        # again for every chunk's recomputation in backward).
        logits = lm_head(rows)  # [N, V]
        loss = chunked_cross_entropy(logits, target, _identity, chunk_rows)
    else:
        loss = chunked_cross_entropy(rows, target, lm_head, chunk_rows)
    denom = num_items_in_batch if num_items_in_batch is not None else sel.sum().clamp(min=1)
    if torch.is_tensor(denom):
        denom = denom.to(loss.device)
    return loss / denom, logits if return_logits else None


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _chunk_ce_sum(to_logits: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    """One chunk: ``rows`` ``[n, D]`` -> fp32 logits ``[n, V]`` -> summed CE (a scalar)."""
    return F.cross_entropy(to_logits(rows).float(), target, reduction="sum")


def chunked_cross_entropy(rows: torch.Tensor, target: torch.Tensor,
                          to_logits: Callable[[torch.Tensor], torch.Tensor], chunk_rows: int | None) -> torch.Tensor:
    """Summed CE of ``to_logits(rows)`` (``[N, D]`` -> ``[N, V]``) against ``target`` ``[N]``,
    computed ``chunk_rows`` rows at a time (torchtune's chunked cross-entropy).

    Chunking the forward alone would not lower the peak: each chunk's ``cross_entropy`` saves its
    fp32 log-softmax ``[n, V]`` for backward, so all chunks together keep the same ``N x V`` fp32
    as one shot until backward runs. Each chunk is therefore a non-reentrant
    ``torch.utils.checkpoint``: the graph keeps only the chunk's input rows (a view of ``rows``)
    and recomputes its logits in backward, one chunk at a time -- one extra LM-head matmul per
    step for an ``N x V`` fp32 tensor never alive at once. It calls ``to_logits`` as a module, so
    a LoRA-wrapped, 4-bit or FSDP2-sharded head works as it is (a fused kernel would need the raw
    weight), and the checkpoint restores the RNG state, so dropout replays identically.
    """
    if chunk_rows is None or rows.shape[0] <= chunk_rows:
        return _chunk_ce_sum(to_logits, rows, target)  # one chunk: nothing to gain from recomputing
    total = None
    # an empty selection (all labels masked) still yields one empty chunk: the loss stays in the
    # graph (0, with zero gradients), as DDP / ZeRO expect every parameter to be reached
    for r, t in zip(rows.split(chunk_rows), target.split(chunk_rows)):
        part = (checkpoint(_chunk_ce_sum, to_logits, r, t, use_reentrant=False) if torch.is_grad_enabled()
                else _chunk_ce_sum(to_logits, r, t))
        total = part if total is None else total + part
    return total
