"""Visual-token compressors: ViT patch features -> LLM-width visual tokens.

Each compressor maps ``[N_img, P, D_vis]`` (P = grid*grid patch features, CLS already dropped) to
``[N_img, T, D_llm]``. The compressor class alone knows T (``num_tokens``): the config, the
processor and the model all ask it via :func:`tokens_per_image`, never recompute it.

Registry ids: ``mlp`` (LLaVA-1.5), ``pool`` (2-D avg pool + MLP), ``resampler`` (mPLUG-Owl2 /
Co-Instruct visual abstractor), ``pixel_shuffle`` (Idefics3 / nanoVLM space-to-depth),
``c_abstractor`` (Honeybee: convolutions, pooling, convolutions).

Two options common to every type (spec keys, for pretrained towers whose features are far from
unit scale, e.g. DINOv2's residual stream: std 0.1 at layer 6, 2.5 at layer 12):
- ``input_norm``: ``none`` | ``layernorm`` (a learned LayerNorm over channels, prismatic style) |
  ``fixed`` (per-channel standardisation with statistics measured once on training features,
  see :func:`calibrate`; kept as buffers, so they travel with the compressor's weights);
- ``output_scale``: ``none`` | ``embedding_rms``: at init the last linear layer is scaled so the
  visual tokens start at the RMS of the LLM's word embeddings (a 0.02-std init otherwise feeds
  the LLM tokens far smaller than any word it was trained on).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class InputNorm(nn.Module):
    """The input stage: identity, LayerNorm, or fixed per-channel standardisation."""

    KINDS = ("none", "layernorm", "fixed")

    def __init__(self, kind: str, dim: int):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"compressor input_norm must be one of {self.KINDS}; got {kind!r}")
        self.kind = kind
        self.norm = nn.LayerNorm(dim) if kind == "layernorm" else None
        if kind == "fixed":
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, P, Dv] -> [N, P, Dv], x's dtype
        if self.kind == "layernorm":
            return self.norm(x)
        if self.kind == "fixed":
            # The statistics are buffers, and engines cast parameters only (DeepSpeed's bf16 engine,
            # FSDP2's MixedPrecisionPolicy): fp32 buffers would promote bf16 features to fp32 and the
            # next (bf16) Linear would refuse them. Standardise in fp32, hand back x's dtype.
            return ((x.float() - self.mean.float()) / self.std.float()).to(x.dtype)
        return x


def _rms_to_target(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
    """Forward hook: ``[N, T, D]`` tokens rescaled to RMS ``module.target_rms`` each."""
    rms = out.float().pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()
    return (out * (module.target_rms / rms)).to(out.dtype)


class Compressor(nn.Module):
    """Base class: subclasses set ``num_tokens`` and implement ``forward`` (which starts with
    ``self.norm_in``). ``calibrated`` (a buffer) records that :func:`calibrate` has run."""

    def __init__(self, vision_dim: int, text_dim: int, grid: int, input_norm: str = "none",
                 output_scale: str = "none", **params: Any):
        super().__init__()
        self.vision_dim, self.text_dim, self.grid = vision_dim, text_dim, grid
        self.num_tokens = self.output_tokens(grid, **params)
        self.norm_in = InputNorm(input_norm, vision_dim)
        if output_scale not in ("none", "embedding_rms", "rms_norm"):
            raise ValueError(f"compressor output_scale must be none, embedding_rms or rms_norm; got {output_scale!r}")
        self.output_scale = output_scale
        if input_norm == "fixed" or output_scale != "none":  # only then: other state dicts stay as they were
            self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        if output_scale == "rms_norm":
            # Every visual token rescaled to the word-embedding RMS, always (not only at init):
            # left free, stage 1 grew them to 9x and stage 2 to 26x a word, and the LLM ignored them.
            self.register_buffer("target_rms", torch.ones(()))
            self.register_forward_hook(_rms_to_target)

    @property
    def needs_calibration(self) -> bool:
        return hasattr(self, "calibrated") and not bool(self.calibrated)

    @classmethod
    def output_tokens(cls, grid: int, **params: Any) -> int:
        raise NotImplementedError


def _mlp(in_dim: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """LLaVA-1.5's projector: Linear -> GELU -> Linear (``mlp2x_gelu``)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class MLPCompressor(Compressor):
    """No compression: every patch becomes one token (576 for ViT-L/14 at 336 px)."""

    def __init__(self, vision_dim: int, text_dim: int, grid: int, depth: int = 2, **common: Any):
        super().__init__(vision_dim, text_dim, grid, **common)
        self.proj = _mlp(vision_dim, text_dim, depth)

    @classmethod
    def output_tokens(cls, grid: int, **params: Any) -> int:
        return grid * grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, P, Dv] -> [N, P, Dt]
        return self.proj(self.norm_in(x))


def _to_grid(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[N, P, D] -> [N, D, g, g] (row-major patches, as CLIP emits them)."""
    n, p, d = x.shape
    if p != grid * grid:
        raise ValueError(f"compressor expected {grid}x{grid}={grid * grid} patches, got {p}")
    return x.transpose(1, 2).reshape(n, d, grid, grid)


class PoolCompressor(Compressor):
    """2-D average pooling of the patch grid to ``size x size``, then the MLP."""

    def __init__(self, vision_dim: int, text_dim: int, grid: int, size: int = 12, depth: int = 2, **common: Any):
        super().__init__(vision_dim, text_dim, grid, size=size, **common)
        self.size = size
        self.proj = _mlp(vision_dim, text_dim, depth)

    @classmethod
    def output_tokens(cls, grid: int, size: int = 12, **params: Any) -> int:
        if size > grid:
            raise ValueError(f"pool size {size} is larger than the patch grid {grid}")
        return size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(_to_grid(self.norm_in(x), self.grid), self.size)  # [N, Dv, k, k]
        return self.proj(pooled.flatten(2).transpose(1, 2))  # [N, k*k, Dt]


class _AbstractorLayer(nn.Module):
    """Pre-norm block: queries cross-attend to [patches; queries], then an MLP (mPLUG-Owl2 style)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:  # q [N, T, D], kv [N, P, D]
        qn = self.norm_q(q)
        # Owl2's abstractor lets queries see themselves too: keys = patches + queries.
        keys = torch.cat([self.norm_kv(kv), qn], dim=1)
        q = q + self.attn(qn, keys, keys, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class ResamplerCompressor(Compressor):
    """Learnable queries cross-attending to the patch features (visual abstractor).

    ``num_queries`` tokens per image regardless of resolution: 64 by default, Co-Instruct's choice,
    so 4 images cost 256 LLM tokens instead of 2304.
    """

    def __init__(self, vision_dim: int, text_dim: int, grid: int, num_queries: int = 64,
                 depth: int = 2, heads: int = 8, dim: int | None = None, **common: Any):
        super().__init__(vision_dim, text_dim, grid, num_queries=num_queries, **common)
        dim = dim or vision_dim
        self.in_proj = nn.Linear(vision_dim, dim)
        # Learned absolute positions let queries tell patches apart (where an object is matters).
        self.pos = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(_AbstractorLayer(dim, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, text_dim)

    @classmethod
    def output_tokens(cls, grid: int, num_queries: int = 64, **params: Any) -> int:
        return num_queries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.in_proj(self.norm_in(x)) + self.pos  # [N, P, D]
        q = self.queries.expand(x.shape[0], -1, -1)  # [N, T, D]
        for layer in self.layers:
            q = layer(q, kv)
        return self.out_proj(self.norm_out(q))  # [N, T, Dt]


class PixelShuffleCompressor(Compressor):
    """Space-to-depth: each ``factor x factor`` block of patches becomes one token (Idefics3)."""

    def __init__(self, vision_dim: int, text_dim: int, grid: int, factor: int = 2, depth: int = 2, **common: Any):
        super().__init__(vision_dim, text_dim, grid, factor=factor, **common)
        self.factor = factor
        self.proj = _mlp(vision_dim * factor * factor, text_dim, depth)

    @classmethod
    def output_tokens(cls, grid: int, factor: int = 2, **params: Any) -> int:
        if grid % factor:
            raise ValueError(f"pixel_shuffle factor {factor} must divide the patch grid {grid}")
        return (grid // factor) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = _to_grid(self.norm_in(x), self.grid)  # [N, Dv, g, g]
        s = F.pixel_unshuffle(g, self.factor)  # [N, Dv*f*f, g/f, g/f]
        return self.proj(s.flatten(2).transpose(1, 2))  # [N, (g/f)^2, Dt]


class _ResBlock(nn.Module):
    """Pre-norm residual 3x3 conv block on the patch grid (GroupNorm with 1 group = LayerNorm over
    channels and space, batch-size independent)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(1, dim), nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, D, h, w]
        return x + self.body(x)


class CAbstractor(Compressor):
    """Honeybee's C-Abstractor: conv blocks on the patch grid, adaptive pooling to ``size x size``,
    more conv blocks, then the MLP.

    Local convolutions *before* pooling let it keep what averaging destroys: a blur or texture cue
    is a non-linear function of neighbouring patches, and the mean of linear patch features (what
    pooling or attention-weighted averaging alone computes) is almost the same for a sharp and a
    blurred image.
    """

    def __init__(self, vision_dim: int, text_dim: int, grid: int, size: int = 4, depth: int = 2,
                 dim: int | None = None, **common: Any):
        super().__init__(vision_dim, text_dim, grid, size=size, **common)
        dim = dim or vision_dim
        self.size = size
        self.stem = nn.Conv2d(vision_dim, dim, 1)
        self.pre = nn.Sequential(*[_ResBlock(dim) for _ in range(depth)])
        self.post = nn.Sequential(*[_ResBlock(dim) for _ in range(depth)])
        self.proj = _mlp(dim, text_dim, 2)

    @classmethod
    def output_tokens(cls, grid: int, size: int = 4, **params: Any) -> int:
        if size > grid:
            raise ValueError(f"c_abstractor size {size} is larger than the patch grid {grid}")
        return size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(self.stem(_to_grid(self.norm_in(x), self.grid)))  # [N, D, g, g]
        h = self.post(F.adaptive_avg_pool2d(h, self.size))  # [N, D, k, k]
        return self.proj(h.flatten(2).transpose(1, 2))  # [N, k*k, Dt]


COMPRESSORS: dict[str, type[Compressor]] = {
    "mlp": MLPCompressor,
    "pool": PoolCompressor,
    "resampler": ResamplerCompressor,
    "pixel_shuffle": PixelShuffleCompressor,
    "c_abstractor": CAbstractor,
}


COMMON_KEYS = ("input_norm", "output_scale")  # options of every compressor type (base class)


def _split(spec: dict[str, Any]) -> tuple[type[Compressor], dict[str, Any]]:
    """Class and its own parameters (the common options left out: they never change T)."""
    params = {k: v for k, v in spec.items() if k not in COMMON_KEYS}
    name = params.pop("type", "mlp")
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; valid: {sorted(COMPRESSORS)}")
    return COMPRESSORS[name], params


def get_compressor(spec: dict[str, Any], vision_dim: int, text_dim: int, grid: int) -> Compressor:
    """Build the compressor named by ``spec['type']`` with the remaining keys as parameters."""
    cls, params = _split(spec)
    common = {k: spec[k] for k in COMMON_KEYS if spec.get(k) is not None}
    try:
        return cls(vision_dim, text_dim, grid, **params, **common)
    except TypeError as err:  # a parameter of another compressor type, left over from an override
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters
                 if p not in ("self", "vision_dim", "text_dim", "grid", "common")] + list(COMMON_KEYS)
        raise ValueError(f"compressor {spec.get('type')!r} got parameters {sorted(params)}; valid: {valid} ({err})") from err


def tokens_per_image(spec: dict[str, Any], grid: int) -> int:
    """How many LLM tokens one image becomes: asked of the compressor class, computed nowhere else."""
    cls, params = _split(spec)
    return cls.output_tokens(grid, **params)


@torch.no_grad()
def calibrate(compressor: Compressor, features: torch.Tensor | None, target_rms: float) -> None:
    """Once, before training: set the fixed input statistics from ``features`` (``[N, P, Dv]``,
    training images' ViT features) and scale the last linear layer so the output RMS equals
    ``target_rms`` (the LLM's word-embedding RMS). Measured on ``features`` when given, else on
    unit-normal inputs (what a normalised input looks like)."""
    if compressor.norm_in.kind == "fixed":
        if features is None:
            raise ValueError("compressor input_norm=fixed needs training features to measure its statistics")
        flat = features.reshape(-1, features.shape[-1]).float()  # [N*P, Dv]
        compressor.norm_in.mean.copy_(flat.mean(0))
        compressor.norm_in.std.copy_(flat.std(0).clamp(min=1e-6))
    if compressor.output_scale == "rms_norm":
        compressor.target_rms.fill_(target_rms)
    if compressor.output_scale == "embedding_rms":
        probe = features if features is not None else torch.randn(
            16, compressor.grid * compressor.grid, compressor.vision_dim, generator=torch.Generator().manual_seed(0))
        last = [m for m in compressor.modules() if isinstance(m, nn.Linear)][-1]
        dtype = last.weight.dtype
        rms = compressor(probe.to(dtype)).float().pow(2).mean().sqrt().item()
        last.weight.mul_(target_rms / rms)
        if last.bias is not None:
            last.bias.mul_(target_rms / rms)
    compressor.calibrated.fill_(True)


def patch_grid(image_size: int, patch_size: int) -> int:
    grid = image_size // patch_size
    if grid * patch_size != image_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    return grid


__all__ = ["COMPRESSORS", "Compressor", "calibrate", "get_compressor", "tokens_per_image", "patch_grid"]
