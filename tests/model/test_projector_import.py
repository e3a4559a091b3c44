"""LLaVA-1.5 projector import: a fake ``mm_projector.bin`` with LLaVA's key names starts the tiny
``mlp`` compressor (from a recipe key, ``model.compressor_init``), shapes and keys are checked with
clear errors, .safetensors works, and the CLI converts a file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import TINY_OVERRIDES, tiny_model_cfg
from llava_compare.cli import main as cli_main
from llava_compare.model.build import build_model
from llava_compare.model.projector_import import ProjectorImportError, read_projector

VISION, TEXT = 32, 64  # the tiny model's ViT and LLM widths


def fake_projector(vision: int = VISION, text: int = TEXT, seed: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.mm_projector.0.weight": torch.randn(text, vision, generator=g),
            "model.mm_projector.0.bias": torch.randn(text, generator=g),
            "model.mm_projector.2.weight": torch.randn(text, text, generator=g),
            "model.mm_projector.2.bias": torch.randn(text, generator=g)}


def mlp_cfg(path) -> dict:
    cfg = tiny_model_cfg(type="mlp", depth=2)
    cfg["compressor_init"] = str(path)
    return cfg


def test_bin_projector_initialises_the_mlp_compressor(tmp_path):
    proj = fake_projector()
    torch.save(proj, tmp_path / "mm_projector.bin")
    model, _ = build_model(mlp_cfg(tmp_path / "mm_projector.bin"))
    sd = model.compressor.state_dict()
    for i in (0, 2):
        assert torch.equal(sd[f"proj.{i}.weight"], proj[f"model.mm_projector.{i}.weight"])
        assert torch.equal(sd[f"proj.{i}.bias"], proj[f"model.mm_projector.{i}.bias"])
    plain, _ = build_model(tiny_model_cfg(type="mlp", depth=2))  # without the key: the seeded init
    assert not torch.equal(plain.compressor.proj[0].weight, sd["proj.0.weight"])


def test_safetensors_projector_and_recipe_key(tmp_path):
    from omegaconf import OmegaConf

    from llava_compare.train.config import compose_config

    proj = fake_projector(seed=3)
    save_file(proj, str(tmp_path / "mm_projector.safetensors"))
    cfg = compose_config(["recipe=tiny_demo_stage1", *TINY_OVERRIDES, f"output_dir={tmp_path / 'run'}",
                          f"model.compressor_init={tmp_path / 'mm_projector.safetensors'}"])
    model_cfg = OmegaConf.to_container(cfg.model)
    assert model_cfg["compressor_init"] == str(tmp_path / "mm_projector.safetensors")
    model, _ = build_model({**model_cfg, "compressor": {"type": "mlp"}})
    assert torch.equal(model.compressor.proj[2].weight, proj["model.mm_projector.2.weight"])


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path):
    torch.save(fake_projector(vision=48), tmp_path / "mm_projector.bin")  # a different ViT width
    with pytest.raises(ProjectorImportError) as e:
        build_model(mlp_cfg(tmp_path / "mm_projector.bin"))
    msg = str(e.value)
    assert "proj.0.weight: file (64, 48) vs model (64, 32)" in msg
    assert "48-d vision feature" in msg and "32 -> 64" in msg


def test_wrong_keys_wrong_depth_and_wrong_compressor_are_refused(tmp_path):
    torch.save({"vision_tower.weight": torch.zeros(2)}, tmp_path / "other.bin")
    with pytest.raises(ProjectorImportError, match="no 'model.mm_projector"):
        read_projector(tmp_path / "other.bin")
    torch.save(fake_projector(), tmp_path / "mm_projector.bin")
    deep = mlp_cfg(tmp_path / "mm_projector.bin")
    deep["compressor"]["depth"] = 3
    with pytest.raises(ProjectorImportError, match="missing \\['proj.4.bias', 'proj.4.weight'\\]"):
        build_model(deep)
    resampler = tiny_model_cfg()
    resampler["compressor_init"] = str(tmp_path / "mm_projector.bin")
    with pytest.raises(ProjectorImportError, match="ResamplerCompressor"):
        build_model(resampler)
    with pytest.raises(FileNotFoundError, match="projector file not found"):
        build_model(mlp_cfg(tmp_path / "missing.bin"))


class NotATensor:  # a pickled object rather than tensors: weights_only loading must refuse it
    pass


def test_weights_only_load_refuses_pickled_objects(tmp_path):
    torch.save({"model.mm_projector.0.weight": NotATensor()}, tmp_path / "evil.bin")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        read_projector(tmp_path / "evil.bin")


def test_cli_converts_to_compressor_keys(tmp_path, capsys):
    torch.save(fake_projector(), tmp_path / "mm_projector.bin")
    out = tmp_path / "compressor.safetensors"
    assert cli_main(["import-projector", str(tmp_path / "mm_projector.bin"), str(out)]) == 0
    assert "vision dim 32 -> LLM dim 64" in capsys.readouterr().out
    assert sorted(load_file(str(out))) == ["proj.0.bias", "proj.0.weight", "proj.2.bias", "proj.2.weight"]
