"""How training micro-batches are formed: padded, grouped by length, packed, or planned bins.

One decision, from ``data.packing`` / ``data.group_by_length`` / ``data.token_budget`` and the
attention kernel that will run (``model/attention.py``):

- ``packing: auto`` (the stage-2 recipes): packed where the kernel skips cross-sample blocks
  (FlashAttention-2, flex), grouped by length elsewhere (sdpa/eager compute whole rows);
- ``packing: true``: packed, in the layout the kernel calls for (one row, or rows no wider than
  the longest sample); with ``token_budget`` the micro-batches are planned at the sampler
  (``data/bins.py``): one bin of about ``token_budget`` tokens per micro-batch;
- ``packing: false``: padded to the longest sample; ``group_by_length`` puts samples of similar
  estimated length into the same micro-batch (LLaVA's ``group_by_modality_length`` idea), planned
  like the bins (``data/bins.py:plan_length_groups``): the Trainer's random sampler then shuffles
  whole micro-batches, and no sampler override is needed;
- ``curriculum: true``: the samples in curriculum order (``data/curriculum.py``), read by the
  Trainer's sequential sampler, batched as ``packing`` says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from torch.utils.data import Subset

from ..data.bins import BinnedDataset, plan_bins, plan_length_groups
from ..data.collator import CompareCollator
from ..data.curriculum import PHASE_KEY, curriculum_order
from ..data.dataset import CompareDataset
from ..model.attention import packs_in_one_row, resolve_attn_implementation, warn_packing_cost

log = logging.getLogger(__name__)

PACKING_CHOICES = (True, False, "auto")


@dataclass(frozen=True)
class Batching:
    """What the config and the kernel decided."""

    kernel: str  # the LLM's attention implementation
    packed: bool
    one_row: bool  # packed into one row (varlen kernels) or into rows of the longest sample
    group_by_length: bool
    token_budget: int | None  # planned bins of about this many tokens (packed only)
    window: int  # samples per best-fit window of the bin planner
    curriculum: bool = False  # phase-by-phase order (data/curriculum.py), read sequentially

    @property
    def binned(self) -> bool:
        return self.token_budget is not None

    @property
    def planned(self) -> bool:
        """Micro-batches are planned into the dataset (one item = one micro-batch)."""
        return self.binned or self.group_by_length

    def describe(self) -> str:
        return self._layout() + (", curriculum order" if self.curriculum else "")

    def _layout(self) -> str:
        if not self.packed:
            return f"padded{', grouped by length' if self.group_by_length else ''} ({self.kernel})"
        rows = "one row" if self.one_row else "rows no wider than the longest sample"
        bins = f", bins of <= {self.token_budget} tokens planned at the sampler" if self.binned else ""
        return f"packed into {rows}{bins} ({self.kernel})"


def batching(cfg: DictConfig) -> Batching:
    """The batching of a composed training config, checked."""
    data = cfg.data
    if data.packing not in PACKING_CHOICES:
        raise ValueError(f"data.packing must be true, false or auto, got {data.packing!r}")
    kernel = resolve_attn_implementation(cfg.model.get("attn_implementation", "auto"))
    one_row = packs_in_one_row(kernel)
    packed = one_row if data.packing == "auto" else bool(data.packing)
    if data.token_budget is not None and not packed:
        raise ValueError(f"data.token_budget plans packed micro-batches, but packing is off here "
                         f"(data.packing={data.packing}, attention {kernel}): set data.packing=true "
                         "or data.token_budget=null")
    if data.token_budget is not None and data.token_budget < data.max_length:
        raise ValueError(f"data.token_budget {data.token_budget} < data.max_length {data.max_length}: "
                         "a sample of max_length would not fit a micro-batch; raise the budget")
    streamed = bool(data.get("streaming", False))
    if streamed and data.token_budget is not None:
        raise ValueError("data.token_budget plans bins from the lengths of the whole dataset, which a stream does "
                         "not have up front: with data.streaming=true use data.token_budget=null (the collator "
                         "still packs each micro-batch with data.packing=true)")
    if streamed and data.group_by_length:
        raise ValueError("data.group_by_length plans micro-batches over the whole dataset, which a stream does not "
                         "have up front: with data.streaming=true set data.group_by_length=false")
    if streamed and data.curriculum:
        raise ValueError("data.curriculum orders the whole dataset, which a stream does not have up front: "
                         "with data.streaming=true set data.curriculum=false")
    # packing=auto groups by length where it does not pack: a stream is padded instead
    grouped = not packed and not streamed and (data.group_by_length or data.packing == "auto")
    if data.curriculum and (grouped or data.token_budget is not None):
        raise ValueError("data.curriculum orders the samples itself; it cannot be combined with "
                         "data.group_by_length / data.packing=auto (padded) or data.token_budget: "
                         "set data.packing=true or false, group_by_length=false, token_budget=null")
    return Batching(kernel, packed, one_row, grouped, data.token_budget if packed else None, data.pack_window,
                    bool(data.curriculum))


def training_set(plan: Batching, dataset: CompareDataset, seed: int, batch_size: int = 1) -> Any:
    """What the Trainer iterates: the samples, or planned micro-batches: groups of ``batch_size``
    samples of similar estimated length, or (token budget) bins."""
    if plan.packed:
        warn_packing_cost(plan.kernel)
    if plan.group_by_length:
        groups = plan_length_groups(dataset.estimated_lengths(), batch_size, seed)
        log.info("%d samples in %d length-grouped micro-batches of <= %d", len(dataset), len(groups), batch_size)
        return BinnedDataset(dataset, [[group] for group in groups])
    if plan.curriculum:
        order = curriculum_order(dataset.meta_column(PHASE_KEY), seed)
        log.info("%d samples in curriculum order", len(order))
        return Subset(dataset, order)
    if not plan.binned:
        return dataset
    lengths = dataset.estimated_lengths()
    row_tokens = None if plan.one_row else min(max(lengths), dataset.max_length)
    bins = plan_bins(lengths, plan.token_budget, row_tokens, seed, plan.window)
    log.info("%d samples in %d micro-batches of <= %d tokens (estimated; %.1f samples each)",
             len(lengths), len(bins), plan.token_budget, len(lengths) / max(len(bins), 1))
    return BinnedDataset(dataset, bins)


def collator(plan: Batching, pad_token_id: int) -> CompareCollator:
    """The training collator of ``plan`` (reports skips and batch sizes to the trainer)."""
    return CompareCollator(pad_token_id, packing=plan.packed, one_row=plan.one_row, report_skips=True)
