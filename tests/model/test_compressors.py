"""Each compressor's output shape and token count; the registry's errors."""

import pytest
import torch

from llava_compare.model.compressors import COMPRESSORS, get_compressor, tokens_per_image

GRID, DV, DT = 8, 32, 48
CASES = [
    ({"type": "mlp"}, 64),
    ({"type": "pool", "size": 2}, 4),
    ({"type": "resampler", "num_queries": 6, "depth": 2, "heads": 4}, 6),
    ({"type": "pixel_shuffle", "factor": 2}, 16),
    ({"type": "c_abstractor", "size": 3, "depth": 1}, 9),
]


@pytest.mark.parametrize("spec,expected", CASES, ids=[c[0]["type"] for c in CASES])
def test_shape_and_token_count(spec, expected):
    torch.manual_seed(0)
    comp = get_compressor(spec, DV, DT, GRID)
    out = comp(torch.randn(3, GRID * GRID, DV))
    assert out.shape == (3, expected, DT)
    assert comp.num_tokens == expected == tokens_per_image(spec, GRID)


def test_every_registered_compressor_is_tested():
    assert {c[0]["type"] for c in CASES} == set(COMPRESSORS)


def test_llava15_geometry_gives_576_tokens():
    assert tokens_per_image({"type": "mlp"}, 336 // 14) == 576


def test_unknown_compressor_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: .*resampler"):
        tokens_per_image({"type": "qformer"}, GRID)


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError, match="divide"):
        tokens_per_image({"type": "pixel_shuffle", "factor": 3}, GRID)
    with pytest.raises(ValueError, match="patches"):
        get_compressor({"type": "pool", "size": 2}, DV, DT, GRID)(torch.randn(1, 10, DV))


def test_resampler_gradients_reach_queries():
    comp = get_compressor({"type": "resampler", "num_queries": 4, "depth": 1, "heads": 4}, DV, DT, GRID)
    comp(torch.randn(2, GRID * GRID, DV)).sum().backward()
    assert comp.queries.grad is not None and comp.queries.grad.abs().sum() > 0
