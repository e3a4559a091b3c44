"""Building a model from a local LLM folder loads the LLM once: no random full-size copy first.

Every rank of an 8-GPU run builds the model. Constructing ViT + compressor + a random LLM and then
replacing the LLM with ``from_pretrained`` initialised a full-size LLM at random on every rank
(Vicuna-7B: 14 GB in its fp16, minutes of init) and, with a dtype conversion at load, held it
beside the loaded copy. Two checks:

- no weight of a loaded LLM goes through an init function, and the loaded weights are the file's;
- the peak RSS while building from a 0.55 B-parameter bf16 LLaMA folder (written by the test,
  uninitialised weights: only their size matters) and reading every weight, measured in a
  subprocess, stays below 1.5 x the weight bytes above a process that only imports the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# LLaMA-shaped, 0.55 B parameters: 2 x 32000 x 1536 embeddings + 16 x 28.3 M per layer
LLM_SHAPE = {"hidden_size": 1536, "num_hidden_layers": 16, "num_attention_heads": 12, "num_key_value_heads": 12,
             "intermediate_size": 4096, "vocab_size": 32000}

# VmHWM, the peak RSS of this process's own address space. (getrusage's ru_maxrss would do, but
# Linux carries the parent's peak into it across fork + exec, so it would report pytest's size.)
PEAK_RSS = """
import json, re, sys
import llava_compare.model.build as build
if sys.argv[1] != "import-only":
    model, _ = build.build_model(json.loads(sys.argv[1]))
    for p in model.parameters():  # read every weight, as training does (loaded files may be mapped lazily)
        p.sum()
    print(json.dumps({"llm_params": sum(p.numel() for p in model.language_model.parameters()),
                      "llm_dtype": str(model.language_model.dtype)}))
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
print(json.dumps({"peak_bytes": int(hwm.group(1)) * 1024}))
"""


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava_compare.model.tiny_tokenizer import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("llama_0p5b")
    tok = build_tiny_tokenizer()
    config = LlamaConfig(**LLM_SHAPE, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu").to(torch.bfloat16).save_pretrained(out)  # no init: only the size matters
    tok.save_pretrained(out)
    return out


def peak(arg: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, arg], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            out.update(json.loads(line))
    return out


def test_building_from_a_local_llm_folder_peaks_below_one_and_a_half_times_its_weights(llama_folder):
    weight_bytes = sum(f.stat().st_size for f in llama_folder.glob("*.safetensors"))
    cfg = {"vision": {"name_or_path": None, "preset": "test"},
           "llm": {"name_or_path": str(llama_folder)},
           "compressor": {"type": "mlp"}, "attn_implementation": "sdpa", "dtype": "bfloat16"}
    baseline = peak("import-only")["peak_bytes"]
    built = peak(json.dumps(cfg))
    assert built["llm_params"] >= 500_000_000 and built["llm_dtype"] == "torch.bfloat16"
    budget = weight_bytes * 1.5 + baseline
    assert built["peak_bytes"] < budget, (
        f"peak RSS {built['peak_bytes'] / 2**30:.2f} GiB while building from a {weight_bytes / 2**30:.2f} GiB "
        f"bf16 folder; budget {budget / 2**30:.2f} GiB (1.5 x weights + {baseline / 2**30:.2f} GiB for imports)")


def test_a_loaded_llm_is_not_initialised_at_random_first(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    from llava_compare.model.build import build_model
    from llava_compare.model.tiny_tokenizer import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=512, tie_word_embeddings=False)
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")

    built_on: list[str] = []  # the device of every LlamaForCausalLM constructed
    construct = modeling_llama.LlamaForCausalLM.__init__

    def spy(self, *args, **kwargs):
        construct(self, *args, **kwargs)
        built_on.append(next(self.parameters()).device.type)

    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "__init__", spy)
    cfg = {"vision": {"name_or_path": None, "preset": "test"},
           "llm": {"name_or_path": str(tmp_path / "llm")}, "compressor": {"type": "mlp"},
           "attn_implementation": "sdpa", "dtype": "float32"}
    model, _ = build_model(cfg)
    # from_pretrained builds its skeleton on the meta device (no memory) and fills it from the file;
    # an LLM built anywhere else was allocated and initialised at random
    assert built_on == ["meta"], f"LlamaForCausalLM constructed on {built_on}"
    saved = load_file(str(tmp_path / "llm" / "model.safetensors"))
    for name, value in model.language_model.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)
