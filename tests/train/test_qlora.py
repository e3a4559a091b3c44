"""QLoRA: the tiny stage 2 with the LLM in 4-bit NF4 runs on CPU; only LoRA and the compressor
train; the ViT, the compressor and lm_head stay full precision."""

import bitsandbytes as bnb
import torch

from llava_compare.loading import unwrap
from llava_compare.train.main import run
from tests.conftest import LORA, stage_cfg


def test_qlora_stage2_runs_and_trains_only_lora_and_compressor(stage1_run, synth_dir, tmp_path):
    s1 = stage1_run[1]
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "q", 4, f"init_from={s1.output_dir}",
                    "model.llm.load_in_4bit=true", *LORA)
    result = run(cfg)
    base = unwrap(result.model)
    linears4 = [m for m in base.language_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears4, "LLM was not quantized"
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in base.compressor.modules())
    assert not isinstance(base.language_model.lm_head, bnb.nn.Linear4bit)
    trained = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or ".compressor." in n for n in trained)
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
