"""On a tiny model that has learnt "which image is brighter", option log-likelihood and
generate-then-parse pick the same option wherever the log-likelihood margin is clear."""

import pytest

from llava_compare.eval.scoring import batch_generate, score_items

from tests.eval.conftest import brightness_items

MARGIN = 1.0  # nats between the best and the second-best option


@pytest.fixture(scope="module")
def both_modes(bright_model):
    model, processor, builder = bright_model
    items = brightness_items(8, seed=123)  # unseen grey levels
    ll = score_items(model, processor, builder, items, "loglik", batch_size=4, progress=False)
    gen = score_items(model, processor, builder, items, "generate", batch_size=4, max_new_tokens=8, progress=False)
    return items, ll, gen


def test_loglik_and_generate_agree_where_unambiguous(both_modes):
    items, ll, gen = both_modes
    clear = [(a, g) for a, g in zip(ll, gen) if a["margin"] >= MARGIN]
    assert len(clear) >= 6, [a["margin"] for a in ll]  # the model is sure about most items
    for a, g in clear:
        assert g["parsed"], g["generated"]
        assert g["pred_index"] == a["pred_index"], (a, g)
    # both styles were exercised: option text ("Image 2") and lettered ("B. The second image")
    assert {g.get("lettered", False) for _, g in clear} == {True, False}
    assert sum(a["correct"] for a in ll) >= 6


def test_batched_generation_equals_one_by_one(bright_model, both_modes):
    model, processor, builder = bright_model
    items, _, gen = both_modes
    one_by_one = [batch_generate(model, processor, builder, [s], 8)[0] for s in items]
    assert one_by_one == [g["generated"] for g in gen]
