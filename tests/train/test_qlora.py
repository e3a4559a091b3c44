"""QLoRA: the tiny stage 2 with the LLM in 4-bit NF4 runs on CPU; only LoRA and the compressor
train; the ViT, the compressor and lm_head stay full precision."""

import bitsandbytes as bnb
import pytest
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


class _Loaded(Exception):
    """Raised by the spy instead of loading (there is no GPU here)."""


def _spy(monkeypatch, owner, calls):
    def from_pretrained(*args, **kwargs):
        calls.append(kwargs)
        raise _Loaded

    monkeypatch.setattr(owner, "from_pretrained", from_pretrained)


def _tiny_llm_folder(path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from llava_compare.model.tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer(512)
    cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)



@pytest.mark.parametrize("cuda,local_rank,expected", [(True, "3", {"": 3}), (True, None, {"": 0}),
                                                      (False, "3", {"": "cpu"})])
def test_4bit_llm_loads_on_this_ranks_gpu(monkeypatch, tmp_path, stage1_run, cuda, local_rank, expected):
    """bitsandbytes loads onto torch.cuda.current_device() when no device_map is given: GPU 0 on
    every rank before the Trainer sets the device. Every 4-bit load names LOCAL_RANK's GPU."""
    from llava_compare import loading
    from llava_compare.model import build
    from tests.conftest import tiny_model_cfg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    calls: list[dict] = []
    _spy(monkeypatch, build.LlavaCompareForConditionalGeneration, calls)  # also loading's: same class
    _spy(monkeypatch, build.AutoModelForCausalLM, calls)
    hub = tiny_model_cfg()
    hub["llm"] = {"name_or_path": _tiny_llm_folder(tmp_path / "llm"), "load_in_4bit": True}
    tiny = tiny_model_cfg()
    tiny["llm"]["load_in_4bit"] = True
    for load in (lambda: build.build_model(hub),  # a hub / local LLM
                 lambda: build.build_model(tiny),  # a tiny LLM, quantized through a temporary save
                 lambda: loading.load(stage1_run[1].output_dir, load_in_4bit=True)):  # init_from
        with pytest.raises(_Loaded):
            load()
    assert len(calls) == 3
    assert all(c["quantization_config"] is not None and c.get("device_map") == expected for c in calls), calls
