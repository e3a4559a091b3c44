"""One loader (``llava_compare.loading.load``) with one rule for stage outputs: the model the
stage started from, LoRA as the stage added it, then the parameters it trained (a checkpoint's
own, whether or not its run has finished). Export folders are covered in tests/ship."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava_compare.cli import main as cli_main
from llava_compare.loading import load, unwrap
from llava_compare.train.main import run
from tests.conftest import LORA, stage_cfg


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in unwrap(model).state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst


def with_checkpoint(stage_dir: Path, dest: Path, shift: float) -> Path:
    """A copy of ``stage_dir`` holding one ``checkpoint-7``: its trained tensors, shifted."""
    shutil.copytree(stage_dir, dest, ignore=shutil.ignore_patterns("checkpoint-*", "eval"))
    tensors = load_file(str(dest / "trainable.safetensors"))
    ckpt = dest / "checkpoint-7"
    ckpt.mkdir()
    save_file({k: v + shift for k, v in tensors.items()}, str(ckpt / "trainable.safetensors"))
    return ckpt


def test_a_checkpoint_loads_the_same_whether_or_not_its_run_finished(stage2_run, synth_dir, tmp_path, capsys):
    ckpt = with_checkpoint(stage2_run[1].output_dir, tmp_path / "stage2", shift=0.01)
    finished, _, meta = load(ckpt)
    assert meta["stage"]["train_llm"] == "lora"
    for name in ("compressor.safetensors", "trainable.safetensors", "adapter"):  # not written yet
        path = ckpt.parent / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    unfinished, processor, _ = load(ckpt)
    assert_same(weights(unfinished), weights(finished))
    final = weights(load(stage2_run[1].output_dir)[0])
    assert any(float((final[k] - v).abs().max()) > 1e-3 for k, v in weights(unfinished).items())
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load(ckpt.parent)
    # generate (and eval, through the same loader) take the checkpoint of a run still training
    images = [str(p) for p in sorted((synth_dir / "images" / "eval").glob("*.png"))[:2]]
    args = ["generate", str(ckpt), "--prompt", "Which image is brighter?", "--max-new-tokens", "2"]
    assert cli_main([*args, "--image", images[0], "--image", images[1]]) == 0
    assert capsys.readouterr().out.strip()


def test_init_from_a_checkpoint_and_a_chain_of_lora_stages(stage2_run, synth_dir, tmp_path):
    """Stage B (LoRA) starts from a checkpoint of stage A (LoRA). B's output reloads to the model
    B trained even without saved base weights (as with a hub base): through B's ``init_from``,
    so A's LoRA is in it, not only B's."""
    ckpt = with_checkpoint(stage2_run[1].output_dir, tmp_path / "stage_a", shift=0.0)
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "stage_b", 2, f"init_from={ckpt}",
                    "optim.lr=1e-2", "optim.llm_lr=1e-2", *LORA)
    result = run(cfg)
    trained = weights(result.model.merge_and_unload())
    assert_same(weights(load(result.output_dir)[0]), trained)
    (result.output_dir / "model.safetensors").unlink()  # what a hub-id base leaves: config only
    reloaded, _, meta = load(result.output_dir)
    assert meta["init_from"] == str(ckpt)
    assert_same(weights(reloaded), trained)


def test_inference_builds_prompts_with_the_training_data_settings(tiny, tmp_path):
    """``builder_for`` (generate / eval / export) and training share one reader of the ``data``
    settings: same template, markers and system prompt, and the same refusal of a bad setting."""
    import json

    from llava_compare.data.pipeline import make_builder
    from llava_compare.loading import builder_for
    from llava_compare.train.config import compose_config

    _, processor = tiny
    cfg = compose_config(["recipe=tiny_demo_stage2", "data.system_prompt=Be brief.", "data.marker_template='Pic {k}: '"])
    meta = {"config": {"data": {k: cfg.data[k] for k in ("image_marker", "marker_template",
                                                          "conversation_template", "system_prompt")}}}
    (tmp_path / "llava_compare.json").write_text(json.dumps(meta))
    trained, inferred = make_builder(cfg, processor), builder_for(tmp_path, processor)
    assert vars(inferred) == vars(trained) and inferred.marker_template == "Pic {k}: "
    assert builder_for(tmp_path, processor, image_marker="none").marker_template is None
    meta["config"]["data"]["image_marker"] = "sometimes"
    (tmp_path / "llava_compare.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="image_marker must be one of interleaved, none"):
        builder_for(tmp_path, processor)


def test_one_reader_finds_the_stage_meta_of_stages_checkpoints_and_exports(tmp_path):
    """``read_meta`` answers for a stage output, its ``checkpoint-N`` folders (the stage's meta)
    and an export; a folder without one is {} (never a hub lookup); ``training_config`` and
    ``is_export`` read through it."""
    import json

    from llava_compare.loading import META, TRAINABLE, is_export, read_meta, training_config

    stage, export, plain = tmp_path / "stage", tmp_path / "export", tmp_path / "plain"
    ckpt = stage / "checkpoint-5"
    for folder in (ckpt, export, plain):
        folder.mkdir(parents=True)
    (stage / META).write_text(json.dumps({"config": {"seed": 3}, "stage": {"name": "instruct"}}))
    (ckpt / TRAINABLE).write_bytes(b"")
    (export / META).write_text(json.dumps({"config": {"seed": 4}, "export": {"format": "native"}}))
    assert read_meta(stage)["stage"] == {"name": "instruct"} and read_meta(ckpt) == read_meta(stage)
    assert training_config(ckpt) == {"seed": 3} and training_config(export) == {"seed": 4}
    assert read_meta(plain) == {} and training_config(plain) == {}
    assert is_export(export) and not is_export(stage) and not is_export(ckpt)
