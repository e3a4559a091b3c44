"""The curriculum order: phase by phase, shuffled within a phase by the seed, free rows spread."""

from __future__ import annotations

import pytest

from llava_compare.data.curriculum import curriculum_order


def test_phases_come_in_order_each_shuffled_by_the_seed():
    phases = [1, 0, 2, 0, 1, 2, 0, 1] * 25
    order = curriculum_order(phases, seed=0)
    assert sorted(order) == list(range(len(phases)))
    assert [phases[i] for i in order] == sorted(phases)
    firsts = [i for i in order if phases[i] == 0]
    assert firsts != sorted(firsts)  # shuffled inside the phase
    assert curriculum_order(phases, seed=0) == order and curriculum_order(phases, seed=1) != order


def test_rows_without_a_phase_spread_over_the_whole_run():
    """A text-only replay source (no phase) is trained all along, not as a block at one end."""
    phases = [0] * 50 + [1] * 50 + [None] * 10
    order = curriculum_order(phases, seed=3)
    where = [order.index(i) for i in range(100, 110)]
    tenths = sorted(p * 10 // len(order) for p in where)
    assert tenths == list(range(10)), where
    assert [phases[i] for i in order if phases[i] is not None] == [0] * 50 + [1] * 50


@pytest.mark.parametrize("bad", ["first", 1.5, True])
def test_a_phase_that_is_not_an_integer_is_refused(bad):
    with pytest.raises(ValueError, match="curriculum_phase must be an integer"):
        curriculum_order([0, bad, 1], seed=0)
