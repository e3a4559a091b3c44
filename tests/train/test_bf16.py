"""bf16 runs keep every trainable parameter in fp32 (frozen weights stay bf16, compute runs in
bf16 under autocast), so small updates are not rounded away: at stage 2's compressor lr of 2e-5
a bf16 weight near 0.02 has a step of 1.2e-4, and AdamW's ~lr-sized updates would vanish."""

import torch

from llava_compare.data.padding import IGNORE
from llava_compare.loading import unwrap
from llava_compare.model.build import build_model
from llava_compare.train.main import run
from tests.conftest import LORA, stage_cfg


def _stage2(synth_dir, out, dtype: str):
    # Built from config (init_from=null) so model.dtype applies; ViT's last layer trained too.
    return stage_cfg("tiny_demo_stage2", synth_dir, out, 4, "init_from=null", "optim.lr=2e-5",
                     "optim.llm_lr=2e-4", "optim.vision_lr=2e-5", *LORA, "stage.train_vision=true",
                     "stage.vision_trainable_layers=1", f"model.dtype={dtype}",
                     f"optim.bf16={'true' if dtype == 'bfloat16' else 'false'}")


def _compressor_moves(cfg) -> tuple[dict[str, float], torch.nn.Module]:
    """How far each compressor tensor moved in the run, and the trained model."""
    before = {n: p.detach().float().clone() for n, p in build_model(cfg.model)[0].compressor.named_parameters()}
    model = unwrap(run(cfg).model)
    after = dict(model.compressor.named_parameters())
    return {n: float((after[n].detach().float() - before[n]).norm()) for n in before}, model


def test_bf16_stage2_trains_fp32_parameters_as_far_as_fp32(synth_dir, tmp_path):
    move32, _ = _compressor_moves(_stage2(synth_dir, tmp_path / "fp32", "float32"))
    move16, model = _compressor_moves(_stage2(synth_dir, tmp_path / "bf16", "bfloat16"))
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(d == torch.float32 for d in trainable.values()), \
        {n: d for n, d in trainable.items() if d != torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}  # the frozen 7B stays half size
    # Per tensor: measured before the fix, LayerNorm weights (near 1.0, bf16 step 7.8e-3) did
    # not move at all and the attention in-projection moved 5x less than under fp32.
    ratios = {n: move16[n] / move32[n] for n in move32}
    assert all(move32.values()) and all(0.5 < r < 2.0 for r in ratios.values()), ratios


def test_bf16_weights_with_fp32_vit_layers_train_without_the_trainers_autocast():
    """model.dtype=bfloat16 with optim.bf16=false: no Trainer autocast, yet the fp32 trained ViT
    layer sits between bf16 frozen ones; the model must still run forward and backward."""
    from PIL import Image

    from llava_compare.train.stages import configure_stage
    from tests.conftest import tiny_model_cfg

    cfg = tiny_model_cfg()
    cfg["dtype"] = "bfloat16"
    model, processor = build_model(cfg)
    model = configure_stage(model, {"train_llm": "lora", "train_compressor": True, "train_vision": True,
                                    "vision_trainable_layers": 1}, {"r": 4, "alpha": 8, "dropout": 0.0})
    inputs = processor(text="Image 1: <image> Image 2: <image> Which? ASSISTANT: Image 1</s>",
                       images=[Image.new("RGB", (32, 32), c) for c in ("red", "blue")])
    labels = inputs["input_ids"].clone()
    labels[:, :-3] = IGNORE
    model.train()
    model(**inputs, labels=labels).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.dtype == torch.float32 for g in grads.values())


def test_end_of_run_loglik_eval_runs_in_the_training_precision(synth_dir, tmp_path):
    """The loglik eval after training ran without autocast: fp32 weights with FlashAttention-2
    (what attn_implementation=auto picks on a flash-attn GPU) reached the kernel as fp32 queries,
    which FA2 refuses. The fake kernels refuse fp32 exactly as the real one does."""
    from llava_compare.train.config import compose_config
    from llava_compare.train.main import run
    from tests.conftest import TINY_OVERRIDES
    from tests.fa2_emulation import fake_flash_attn_2

    cfg = compose_config(["recipe=tiny_demo_stage2", *TINY_OVERRIDES, f"output_dir={tmp_path / 'run'}",
                          "init_from=null", "optim.max_steps=1", "optim.bf16=true",
                          "model.attn_implementation=flash_attention_2", "eval.enabled=true", "eval.mode=loglik",
                          f"data.train=[{{path: {synth_dir}/train.json}}]",
                          f"data.eval=[{{path: {synth_dir}/eval.json, max_samples: 4}}]"])
    with fake_flash_attn_2() as calls:
        result = run(cfg)
    assert result.metrics["eval"]["n"] > 0
    assert calls.calls and {c.dtype for c in calls.calls} == {torch.bfloat16}
