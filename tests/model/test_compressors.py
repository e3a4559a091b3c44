"""Each compressor's output shape and token count; the registry's errors."""

import pytest
import torch

from llava_compare.model.compressors import COMPRESSORS, calibrate, get_compressor, tokens_per_image

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


# --- input standardisation and output scaling (issue 14: pretrained towers far from unit scale) ---


@pytest.mark.parametrize("spec", [c[0] for c in CASES], ids=[c[0]["type"] for c in CASES])
def test_fixed_input_norm_and_output_scale_calibrate_every_type(spec):
    torch.manual_seed(0)
    # DINOv2-like features: channels on wildly different scales and offsets
    feats = torch.randn(16, GRID * GRID, DV) * torch.logspace(-2, 1, DV) + torch.linspace(-5, 5, DV)
    comp = get_compressor({**spec, "input_norm": "fixed", "output_scale": "embedding_rms"}, DV, DT, GRID)
    assert comp.needs_calibration
    calibrate(comp, feats, target_rms=0.37)
    assert not comp.needs_calibration
    normed = comp.norm_in(feats).reshape(-1, DV)
    assert torch.allclose(normed.mean(0), torch.zeros(DV), atol=1e-4)
    assert torch.allclose(normed.std(0), torch.ones(DV), atol=1e-3)
    out_rms = comp(feats).pow(2).mean().sqrt().item()
    assert out_rms == pytest.approx(0.37, rel=1e-3)
    assert comp.num_tokens == tokens_per_image({**spec, "input_norm": "fixed"}, GRID)


def test_calibration_travels_in_the_state_dict():
    feats = torch.randn(4, GRID * GRID, DV) * 3 + 1
    spec = {"type": "pool", "size": 2, "input_norm": "fixed", "output_scale": "embedding_rms"}
    a = get_compressor(spec, DV, DT, GRID)
    calibrate(a, feats, 0.1)
    b = get_compressor(spec, DV, DT, GRID)
    b.load_state_dict(a.state_dict())
    assert not b.needs_calibration
    assert torch.equal(a(feats), b(feats))


def test_plain_compressor_state_dict_is_unchanged_by_the_options():
    """Old compressor.safetensors files (and projector_import / llava-hf export) keep loading."""
    keys = set(get_compressor({"type": "mlp"}, DV, DT, GRID).state_dict())
    assert keys == {"proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias"}
    assert not get_compressor({"type": "mlp"}, DV, DT, GRID).needs_calibration


def test_layernorm_input_stage_normalises_each_token():
    comp = get_compressor({"type": "mlp", "input_norm": "layernorm"}, DV, DT, GRID)
    x = torch.randn(2, GRID * GRID, DV) * 50 + 7
    y = comp.norm_in(x)
    assert torch.allclose(y.mean(-1), torch.zeros(2, GRID * GRID), atol=1e-4)
    assert not comp.needs_calibration  # learned, nothing to measure


def test_fixed_input_norm_without_features_is_a_clear_error():
    comp = get_compressor({"type": "mlp", "input_norm": "fixed"}, DV, DT, GRID)
    with pytest.raises(ValueError, match="needs training features"):
        calibrate(comp, None, 0.1)


def test_bad_option_values_are_refused():
    with pytest.raises(ValueError, match="input_norm must be one of"):
        get_compressor({"type": "mlp", "input_norm": "batchnorm"}, DV, DT, GRID)
    with pytest.raises(ValueError, match="output_scale must be"):
        get_compressor({"type": "mlp", "output_scale": "unit"}, DV, DT, GRID)


def test_rms_norm_output_keeps_every_token_at_the_target_scale_while_weights_grow():
    feats = torch.randn(3, GRID * GRID, DV) * 4
    comp = get_compressor({"type": "pool", "size": 2, "input_norm": "fixed", "output_scale": "rms_norm"}, DV, DT, GRID)
    calibrate(comp, feats, target_rms=0.2)
    with torch.no_grad():
        comp.proj[-1].weight.mul_(30)  # what training did to the demo's projector
    rms = comp(feats).pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.2), rtol=1e-4)
    comp(feats).sum().backward()  # gradients still flow
    assert comp.proj[0].weight.grad is not None


def _cast_parameters_only(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """What DeepSpeed's bf16 engine and FSDP2's MixedPrecisionPolicy do: parameters in the compute
    dtype, buffers (the fixed input statistics) left as they were loaded."""
    for p in module.parameters():
        p.data = p.data.to(dtype)


OPTIONS = [{"input_norm": n, "output_scale": s} for n in ("none", "layernorm", "fixed")
           for s in ("none", "embedding_rms", "rms_norm")]


@pytest.mark.parametrize("spec", [c[0] for c in CASES], ids=[c[0]["type"] for c in CASES])
@pytest.mark.parametrize("options", OPTIONS, ids=[f"{o['input_norm']}-{o['output_scale']}" for o in OPTIONS])
def test_bf16_parameters_with_fp32_buffers_compute_in_bf16(spec, options):
    """The demo's compressor (pool, input_norm=fixed, output_scale=embedding_rms) crashed at step 1
    under every DeepSpeed bf16 config: its fp32 statistics promoted the bf16 input to fp32."""
    torch.manual_seed(0)
    comp = get_compressor({**spec, **options}, DV, DT, GRID)
    feats = torch.randn(3, GRID * GRID, DV) * 2.5 + 0.3
    if comp.needs_calibration:
        calibrate(comp, feats, 0.05)
    _cast_parameters_only(comp, torch.bfloat16)
    out = comp(feats.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in comp.parameters() if p.requires_grad)
