"""What each stage trains (bit-identical frozen parts), loss going down, stage chaining."""

import pytest
import torch

from llava_compare.loading import load, unwrap
from llava_compare.model.build import build_model
from llava_compare.train.config import compose_config
from llava_compare.train.main import run
from tests.conftest import stage_cfg


def params(model, component):
    return {n: p.detach().clone() for n, p in unwrap(model).named_parameters() if n.startswith(component)}


def first_last_loss(metrics):
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    return sum(losses[:3]) / 3, sum(losses[-3:]) / 3


def test_stage1_trains_only_the_compressor(stage1_run):
    initial, result = stage1_run
    for comp in ("vision_tower", "language_model"):
        before, after = params(initial, comp), params(result.model, comp)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), f"{comp} changed in stage 1"
    before, after = params(initial, "compressor"), params(result.model, "compressor")
    assert all(not torch.equal(before[k], after[k]) for k in before if not k.endswith("bias"))


def fixed_batch_loss(model, cfg):
    """Loss of ``model`` on the first 16 training samples, deterministic (eval mode)."""
    from llava_compare.data.collator import CompareCollator
    from llava_compare.train.main import make_dataset

    model = unwrap(model).eval()
    ds = make_dataset(cfg, _processor(cfg))
    batch = CompareCollator(0)([ds[i] for i in range(16)])
    with torch.no_grad():
        return float(model(**batch).loss)


def _processor(cfg):
    return build_model(cfg.model)[1]


def test_stage1_loss_decreases(stage1_run, synth_dir, tmp_path):
    initial, result = stage1_run
    cfg = stage_cfg("tiny_demo_stage1", synth_dir, tmp_path, 1)
    # A frozen random LLM leaves the compressor little room (its logits are near-uniform), so
    # the drop is small but steady; a compressor that does not learn leaves it flat.
    before, after = fixed_batch_loss(initial, cfg), fixed_batch_loss(result.model, cfg)
    assert after < before - 0.02, (before, after)


def test_stage1_output_reloads_the_trained_compressor(stage1_run):
    _, result = stage1_run
    reloaded, _, _ = load(result.output_dir)
    trained = params(result.model, "compressor")
    assert all(torch.equal(trained[k], v) for k, v in params(reloaded, "compressor").items())


def test_stage2_trains_only_lora_and_compressor(stage2_run):
    start, result = stage2_run
    before = {n: p.detach().clone() for n, p in start.named_parameters()}
    trained = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained and all(("lora_" in n) or (".compressor." in n) for n in trained)
    assert any("lora_" in n for n in trained) and any(".compressor." in n for n in trained)
    # frozen base weights of the ViT and the LLM are bit-identical to stage 1's
    for name, p in unwrap(result.model).named_parameters():
        if "lora_" in name or name.startswith("compressor"):
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p.detach(), before[key]), f"{name} changed in stage 2"
    first, last = first_last_loss(result.metrics)
    assert last < first - 0.1, (first, last)
    merged, _, _ = load(result.output_dir)  # LoRA merged back into plain Linear layers
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_stage2_full_finetune_option(stage1_run, synth_dir, tmp_path):
    _, s1 = stage1_run
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "full", 2, f"init_from={s1.output_dir}",
                    "stage=instruct_full", "stage.train_vision=false")
    result = run(cfg)
    trained = {n.split(".")[0] for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained == {"compressor", "language_model"}


def _train_vision_stage2(stage1_run, synth_dir, out, layers: str):
    """A 3-step full stage 2 with the ViT trainable (``vision_trainable_layers=layers``): the
    stage-1 model it started from and the run."""
    _, s1 = stage1_run
    start, _, _ = load(s1.output_dir)
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, out, 3, f"init_from={s1.output_dir}",
                    "stage=instruct_full", "stage.train_vision=true",
                    f"stage.vision_trainable_layers={layers}", "optim.vision_lr=1e-2")
    return start, run(cfg)


def test_stage2_unfrozen_vision_tower_trains_and_reloads(stage1_run, synth_dir, tmp_path):
    """stage.train_vision=true trains the ViT too (its own optim.vision_lr); the trained ViT is
    saved and reloaded. Without it (the other stage-2 tests) the ViT stays bit-identical."""
    start, result = _train_vision_stage2(stage1_run, synth_dir, tmp_path / "vit", "null")
    trained = {n.split(".")[0] for n, p in result.model.named_parameters() if p.requires_grad}
    assert trained == {"vision_tower", "compressor", "language_model"}
    before, after = params(start, "vision_tower"), params(result.model, "vision_tower")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)}/{len(before)} ViT tensors changed"
    reloaded, _, _ = load(result.output_dir)
    for k, v in params(reloaded, "vision_tower").items():
        assert torch.equal(v, after[k]), f"{k} not reloaded from the stage output"


def test_stage2_vision_trainable_layers_trains_only_the_last_layers(stage1_run, synth_dir, tmp_path):
    """stage.vision_trainable_layers=1: the ViT's last encoder layer trains; its embeddings and
    earlier layers stay bit-identical."""
    start, result = _train_vision_stage2(stage1_run, synth_dir, tmp_path / "vit_last", "1")
    before, after = params(start, "vision_tower"), params(result.model, "vision_tower")
    last = [k for k in before if "encoder.layers.1." in k]
    assert last and all(not torch.equal(before[k], after[k]) for k in last if k.endswith("weight"))
    assert all(torch.equal(before[k], after[k]) for k in before if k not in last)
    with pytest.raises(ValueError, match="vision_trainable_layers"):
        run(stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "vit_bad", 1, "init_from=null",
                      "stage.train_vision=true", "stage.vision_trainable_layers=3"))


def test_vision_trainable_layers_counts_back_from_the_feature_layer():
    """With vision_feature_layer=-2 (layer 1 of 2 never reaches the compressor), N=1 trains
    layer 0; asking for more layers than reach the compressor is refused."""
    from llava_compare.train.stages import set_vision_trainable
    from tests.conftest import tiny_model_cfg

    cfg = tiny_model_cfg()
    cfg["vision_feature_layer"] = -1  # the whole 2-layer tower (at -2 the model cuts layer 1 off)
    model, _ = build_model(cfg)
    stage = {"train_vision": True, "vision_trainable_layers": 1}
    vit = unwrap(model).vision_tower
    flags = {n: p.requires_grad for n, p in vit.named_parameters()}
    try:
        set_vision_trainable(vit, stage, feature_layer=-2)
        trainable = {n.split(".")[2] for n, p in vit.named_parameters() if p.requires_grad}
        assert trainable == {"0"}, trainable
        set_vision_trainable(vit, stage, feature_layer=-1)
        assert {n.split(".")[2] for n, p in vit.named_parameters() if p.requires_grad} == {"1"}
        with pytest.raises(ValueError, match="vision_trainable_layers must be in 1..1"):
            set_vision_trainable(vit, {**stage, "vision_trainable_layers": 2}, feature_layer=-2)
    finally:  # the session fixture is shared: restore its flags
        for n, p in vit.named_parameters():
            p.requires_grad_(flags[n])


def test_resume_continues_to_the_same_weights(synth_dir, tmp_path):
    """6 uninterrupted steps == 3 steps, stop, resume=auto to 6 (same data order, optimizer, RNG)."""
    common = ["optim.lr=1e-2", "save_steps=3", "optim.scheduler=constant"]
    straight = run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "a", 6, *common))
    run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "b", 3, *common))
    resumed = run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "b", 6, *common, "resume=auto"))
    a, b = params(straight.model, "compressor"), params(resumed.model, "compressor")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_runs(synth_dir, tmp_path):
    result = run(stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "gc", 2, "init_from=null",
                           "optim.gradient_checkpointing=true"))
    assert result.metrics["train_loss"] > 0


def test_packed_training_matches_padded(synth_dir, tmp_path):
    """The Trainer path with the flattened layout (FA2 kwargs in the batch): the same losses
    step by step as padded batches of the same samples."""
    from tests.conftest import LORA

    losses = {}
    for packing in ("false", "true"):
        result = run(stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / packing, 3, "init_from=null", *LORA,
                               f"data.packing={packing}"))
        losses[packing] = [h["loss"] for h in result.metrics["log_history"] if "loss" in h]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


def test_wandb_logs_offline(synth_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path / "w", 2, "logger=wandb"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
