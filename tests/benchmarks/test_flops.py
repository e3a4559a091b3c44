"""The benchmark's attention cost and useful fractions, on a small example worked out by hand.

Three samples of 3, 2 and 4 tokens. Packed for sdpa in two rows ``[3, 2]`` and ``[4]``: width 5,
the second row with a one-token pad tail. Padded: three rows of width 4.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import flops
from llava_compare.data.bins import PackedBin
from llava_compare.data.collator import CompareCollator
from llava_compare.data.padding import IGNORE

PAD = 0


def _item(n: int, first_id: int) -> dict:
    ids = torch.arange(first_id, first_id + n)
    labels = torch.full((n,), IGNORE)
    labels[-1] = int(ids[-1])  # the last token is the answer
    return {"input_ids": ids, "labels": labels, "sample_id": f"s{n}"}


@pytest.fixture
def items() -> list[dict]:
    return [_item(3, 10), _item(2, 20), _item(4, 30)]


def test_packed_rows_layout_and_fractions(items: list[dict]) -> None:
    batch = CompareCollator(PAD, packing=True, one_row=False)([PackedBin([items[:2], items[2:]])])
    assert batch["input_ids"].shape == (2, 5)  # the collator's layout: the tail is a segment of its own
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9, 10]
    lay = flops.layout(batch)
    assert lay == flops.Layout(rows=((3, 2), (4,)), width=5)
    assert (lay.samples, lay.real_tokens, lay.computed_tokens) == (3, 9, 10)
    # sdpa computes every score of both rows: 2 x 5^2; the samples' own causal pairs: 6 + 3 + 10
    assert (lay.dense_pairs, lay.useful_pairs) == (50, 19)
    assert flops.fractions([lay]) == {"useful_token_fraction": 0.9, "useful_pair_fraction": 19 / 50}
    # a varlen kernel computes the triangles of the segments, the tail's one pair included
    assert lay.varlen_pairs == 20
    assert flops.fractions([lay], varlen=True)["useful_pair_fraction"] == 19 / 20


def test_padded_layout_and_fractions(items: list[dict]) -> None:
    lay = flops.layout(CompareCollator(PAD)(items))
    assert lay == flops.Layout(rows=((3,), (2,), (4,)), width=4, padded=True)
    assert (lay.real_tokens, lay.computed_tokens, lay.dense_pairs, lay.useful_pairs) == (9, 12, 48, 19)
    assert flops.fractions([lay]) == {"useful_token_fraction": 0.75, "useful_pair_fraction": 19 / 48}
    assert lay.varlen_pairs == 19  # FA2 unpads a padded batch: its padding computes no pairs


def test_one_full_row_is_not_fully_useful(items: list[dict]) -> None:
    """Even without padding a dense kernel computes the causal upper triangle and the cross-sample blocks."""
    lay = flops.layout(CompareCollator(PAD, packing=True, one_row=True)(items))
    assert lay == flops.Layout(rows=((3, 2, 4),), width=9)
    assert flops.fractions([lay]) == {"useful_token_fraction": 1.0, "useful_pair_fraction": 19 / 81}
    assert lay.varlen_pairs == lay.useful_pairs == 19


def test_fractions_sum_over_batches_before_dividing() -> None:
    short, long = flops.Layout(((1,),), 2, padded=True), flops.Layout(((4,),), 4, padded=True)
    assert flops.fractions([short, long])["useful_token_fraction"] == 5 / 6
    assert flops.fractions([short, long])["useful_pair_fraction"] == (1 + 10) / (4 + 16)


def test_attention_flops_per_pair() -> None:
    # Q K^T and P V: 2 d each forward; backward twice the forward
    assert flops.attention_flops(50, dim=8, layers=2) == 12 * 8 * 2 * 50 == 9600
    assert flops.attention_flops(50, dim=8, layers=2, backward=False) == 4 * 8 * 2 * 50


def test_head_positions(items: list[dict]) -> None:
    batch = CompareCollator(PAD)(items)
    assert flops.head_positions(batch, all_positions=True) == 12
    assert flops.head_positions(batch, all_positions=False) == 3  # one answer token per sample


def test_linear_weights_skips_the_head() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 5, bias=False))
    assert flops.linear_weights(net) == 12 + 20
    assert flops.linear_weights(net, skip=net[2]) == 12
