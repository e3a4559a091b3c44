"""``eval`` and ``generate`` choose their device: ``--device auto|cpu|cuda[:N]`` (auto = CUDA when
present, in bf16 there). No GPU here: the CUDA choice is checked with torch.cuda patched, and bf16
inference (what a GPU run uses) runs on the CPU."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from llava_compare.cli import main as cli_main
from llava_compare.data.conversation import ConversationBuilder
from llava_compare.eval.scoring import batch_generate, batch_option_logliks
from llava_compare.generate import generate_answer, question_sample
from llava_compare.loading import inference_dtype, place_for_inference, resolve_device
from llava_compare.model.build import build_model
from tests.conftest import tiny_model_cfg


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert inference_dtype(resolve_device("auto")) is None  # the CPU keeps the weights' fp32


def test_auto_is_cuda_in_bf16_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert inference_dtype(resolve_device("auto")) == torch.bfloat16
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec,message", [("gpu", "must be auto, cpu, cuda or cuda:N"),
                                          ("mps", "must be auto, cpu, cuda or cuda:N"),
                                          ("cuda", "no CUDA device")])
def test_bad_device_is_a_one_line_usage_error(monkeypatch, capsys, spec, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["generate", "m", "--image", "a.png", "--prompt", "q"], ["eval", "m", "--data", "d.json"]):
        with pytest.raises(SystemExit):
            cli_main([*command, "--device", spec])
        assert message in capsys.readouterr().err


def test_bf16_inference_generates_and_scores():
    """What --device auto runs on a GPU: the model in bf16, pixels cast to it, option scoring
    and generation agree with the fp32 model's choice."""
    model, processor = build_model(tiny_model_cfg())
    bf16 = place_for_inference(build_model(tiny_model_cfg())[0].eval(), torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    builder = ConversationBuilder(processor.tokenizer, "auto", "Image {k}: ", "")
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    sample = question_sample("Which image is brighter?", images)
    options = ["Image 1", "Image 2", "They are the same"]
    s32 = batch_option_logliks(model.eval(), processor, builder, [(sample, options)])[0]
    s16 = batch_option_logliks(bf16, processor, builder, [(sample, options)])[0]
    assert torch.allclose(torch.tensor(s16), torch.tensor(s32), atol=0.1), (s16, s32)
    assert isinstance(generate_answer(bf16, processor, builder, sample, max_new_tokens=3), str)
    assert len(batch_generate(bf16, processor, builder, [sample, sample], max_new_tokens=3)) == 2


def test_generate_cli_runs_on_the_chosen_device(stage2_run, synth_dir, capsys):
    import json

    rec = next(r for r in json.loads((synth_dir / "eval.json").read_text()) if len(r["image"]) == 2)
    images = [str(synth_dir / p) for p in rec["image"]]
    args = ["generate", str(stage2_run[1].output_dir), "--image", images[0], "--image", images[1],
            "--prompt", "Which image is brighter?", "--max-new-tokens", "4"]
    assert cli_main([*args, "--device", "cpu"]) == 0
    on_cpu = capsys.readouterr().out
    assert cli_main(args) == 0  # auto: the CPU here
    assert capsys.readouterr().out == on_cpu
