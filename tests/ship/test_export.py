"""Export: a trained stage becomes a folder that loads three ways with the training model's logits
and greedy text -- (1) ``import llava_compare`` + Auto classes, (2) ``trust_remote_code=True`` in a
Python where llava_compare cannot be imported, (3) transformers' own LLaVA classes (``mlp``
compressor) -- keeps the trained compressor, keeps LoRA as an adapter with ``--no-merge``, and
uploads through ``HfApi`` with the token huggingface_hub finds, never writing or logging it."""

from __future__ import annotations

import ast
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llava_compare.train.outputs import save_base, save_trained
from llava_compare.cli import main as cli_main
from llava_compare.generate import generate_answer, question_sample
from llava_compare.loading import builder_for
from llava_compare.model.build import build_model
from llava_compare.ship.remote_code import AUTO_MAP, BUNDLES, render
from llava_compare.train.stages import configure_stage
from tests.conftest import tiny_model_cfg

ATOL = 1e-4
PROMPT = "Which image is brighter?"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": PROMPT}]}]
DIFFS: dict[str, float] = {}  # measured max |logit diff| per loading way (printed at the end with -s)


# --- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images(synth_dir) -> list[str]:
    rec = next(r for r in json.loads((synth_dir / "eval.json").read_text()) if len(r["image"]) == 2)
    return [str(synth_dir / p) for p in rec["image"]]


def encode(processor, builder, images):
    """The ids / pixels generate_answer and evaluate build for the training model."""
    ids, _ = processor.expand_image_tokens(builder.encode_prompt(question_sample(PROMPT, images)))
    return torch.tensor([ids]), processor.preprocess_images(images)


@torch.no_grad()
def logits_of(model, ids, pixels) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels).logits.float()
    finally:
        model.train(was_training)


# Greedy answers compared token for token between the trained model and an export: the random
# tiny model's top logits come within float noise of each other after a few tokens on some image
# pairs (the logits themselves are checked to ATOL), so the comparison stops before that.
NEW_TOKENS = 4


def answer_of(model, processor, builder, images, max_new_tokens=None) -> str:
    max_new_tokens = max_new_tokens or NEW_TOKENS
    was_training = model.training
    try:
        return generate_answer(model.eval(), processor, builder, question_sample(PROMPT, images), max_new_tokens)
    finally:
        model.train(was_training)


def max_diff(a: torch.Tensor, b: torch.Tensor, way: str) -> float:
    assert a.shape == b.shape
    d = float((a - b).abs().max())
    DIFFS[way] = d
    return d


def run_cli(args: list[str], capsys) -> str:
    assert cli_main(args) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module", autouse=True)
def _report_diffs():
    yield
    if DIFFS:
        print("\nround-trip max |logit diff|:", json.dumps(DIFFS, indent=1))


@pytest.fixture(scope="module")
def stage2(stage2_run):
    """(stage folder, in-memory trained PeftModel, processor, builder) of the tiny LoRA stage 2."""
    from llava_compare.data.processor import LlavaCompareProcessor

    out = stage2_run[1].output_dir
    processor = LlavaCompareProcessor.from_pretrained(out)
    return out, stage2_run[1].model, processor, builder_for(out, processor)


@pytest.fixture(scope="module")
def mlp_stage(tmp_path_factory):
    """A tiny ``mlp``-compressor LoRA stage output (LoRA and compressor perturbed so both matter)."""
    cfg = tiny_model_cfg(type="mlp", depth=2)
    model, processor = build_model(cfg)
    out = tmp_path_factory.mktemp("mlp_stage")
    stage = {"name": "instruct", "train_compressor": True, "train_vision": False, "train_llm": "lora"}
    peft = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    data = {"train": [{"path": "org/compare-data"}], "image_marker": "interleaved",
            "marker_template": "Image {k}: ", "conversation_template": "auto", "system_prompt": None}
    save_base(model, processor, out, {"model": cfg, "stage": stage, "recipe": "test_mlp", "peft": peft,
                                      "init_from": None, "config": {"model": cfg, "data": data}})
    model = configure_stage(model, stage, peft)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_trained(model, out)
    (out / "eval_results.json").write_text(json.dumps(
        {"tasks": {"blur": {"n": 4, "accuracy": 0.75, "chance": 0.5}},
         "overall_2image_mc": {"n": 4, "accuracy": 0.75, "chance": 0.5}}))
    (out / "eval").mkdir()  # where training's end-of-run evaluation writes (the eval module's layout)
    (out / "eval" / "results.json").write_text(json.dumps(
        {"model": {"path": str(out)}, "metrics": {"tasks": {"change": {"n": 3, "exact_match": 1 / 3, "f1": 0.5}},
                                                  "overall_2image_mc": {"n": 0, "accuracy": 0.0, "chance": 0.0}}}))
    return out, model.eval(), processor, builder_for(out, processor)


@pytest.fixture(scope="module")
def native_export(stage2, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "native"
    assert cli_main(["export", str(stage2[0]), str(out), "--max-shard-size", "300KB"]) == 0
    return out


@pytest.fixture(scope="module")
def hf_export(mlp_stage, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "llava_hf"
    assert cli_main(["export", str(mlp_stage[0]), str(out), "--format", "llava-hf",
                     "--max-shard-size", "300KB"]) == 0
    return out


# --- the standalone code ---------------------------------------------------------------------------
def test_remote_code_is_generated_from_the_package_and_standalone():
    from llava_compare.data import processor as processor_mod
    from llava_compare.model import compressors, config, modeling

    for filename, modules in BUNDLES.items():
        text = render(filename)
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{filename}: relative import line {node.lineno}"
                assert not (node.module or "").startswith("llava_compare"), filename
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("llava_compare") for a in node.names), filename
        compile(text, filename, "exec")
    # one source of truth: the classes are the package's source, verbatim
    modeling_text = render("modeling_llava_compare.py")
    for obj in (modeling.LlavaCompareForConditionalGeneration, config.LlavaCompareConfig,
                compressors.ResamplerCompressor, compressors.get_compressor):
        assert inspect.getsource(obj) in modeling_text
    assert inspect.getsource(processor_mod.LlavaCompareProcessor) in render("processing_llava_compare.py")
    assert re.search(r"""IMAGE_PLACEHOLDER = ['"]<image>['"]""", render("processing_llava_compare.py"))


@pytest.mark.parametrize("marker, system", [("Image {k}: ", None), ("Picture {k} -> ", "Be brief."), (None, "")])
def test_chat_template_renders_the_training_conversation(tiny, marker, system):
    from llava_compare.data.conversation import VICUNA_SYSTEM, ConversationBuilder
    from llava_compare.data.sample import Message, Sample
    from llava_compare.ship.chat_template import vicuna_chat_template

    tok = tiny[1].tokenizer
    builder = ConversationBuilder(tok, "vicuna_v1", marker, system)
    template = vicuna_chat_template(tok, marker, VICUNA_SYSTEM if system is None else system)
    turns = [("system", "You compare pictures."), ("user", "<image>\n<image>\nWhich image is brighter?"),
             ("assistant", "Image 2"), ("user", "And this one? <image>"), ("assistant", "It is darker.")]
    for msgs in (turns, turns[1:]):  # with and without a system message
        sample = Sample("t", [Message(r, c) for r, c in msgs], images=["a", "b", "c"])
        text = tok.apply_chat_template([{"role": r, "content": c} for r, c in msgs], chat_template=template,
                                       tokenize=False)
        assert tok(text, add_special_tokens=False)["input_ids"] == builder.encode(sample).input_ids, text
        prompt = tok.apply_chat_template([{"role": r, "content": c} for r, c in msgs[:-1]],
                                         chat_template=template, tokenize=False, add_generation_prompt=True)
        assert tok(prompt, add_special_tokens=False)["input_ids"] == builder.encode_prompt(sample), prompt


# --- way 1: import llava_compare + Auto classes ------------------------------------------------------
def test_native_export_layout_and_model_card(native_export, stage2):
    out = native_export
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()
    assert json.loads((out / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert json.loads((out / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": AUTO_MAP["AutoProcessor"]}
    for filename in BUNDLES:
        assert (out / filename).read_text() == render(filename)
    meta = json.loads((out / "llava_compare.json").read_text())
    stage_meta = json.loads((stage2[0] / "llava_compare.json").read_text())
    assert meta["config"] == stage_meta["config"] and meta["export"]["format"] == "native"
    assert meta["export"]["merged"] is True and not (out / "adapter").exists()
    assert not list(out.glob("*.bin")) and not (out / "compressor.safetensors").exists()
    card = (out / "README.md").read_text()
    for text in ("tiny random (built from config)", "tiny_demo_stage2", "train.json", "LoRA r 32",
                 "(merged into the weights)", "import llava_compare", "trust_remote_code=True",
                 "--format llava-hf", "pipeline_tag: image-text-to-text", "conversation_template"):
        assert text in card, text


def test_way1_native_same_logits_prompt_and_text(native_export, stage2, images, capsys):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import llava_compare

    stage_dir, trained, processor, builder = stage2
    model = AutoModelForImageTextToText.from_pretrained(native_export)
    hub_proc = AutoProcessor.from_pretrained(native_export)
    assert isinstance(model, llava_compare.LlavaCompareForConditionalGeneration)
    assert isinstance(hub_proc, llava_compare.LlavaCompareProcessor)
    ids, pixels = encode(processor, builder, images)
    assert max_diff(logits_of(model, ids, pixels), logits_of(trained, ids, pixels), "1-native") < ATOL
    # the saved chat template + processor reproduce the training prompt exactly
    enc = hub_proc(text=hub_proc.apply_chat_template(MESSAGES, add_generation_prompt=True), images=images)
    assert enc["input_ids"].tolist() == ids.tolist() and torch.equal(enc["pixel_values"], pixels)
    expected = answer_of(trained, processor, builder, images)
    assert answer_of(model, hub_proc, builder_for(native_export, hub_proc), images) == expected
    out = run_cli(["generate", str(native_export), "--image", images[0], "--image", images[1],
                   "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)], capsys)
    assert out.strip() == expected
    streamed = run_cli(["generate", str(native_export), "--image", images[0], "--image", images[1],
                        "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS), "--stream"], capsys)
    assert streamed.strip() == expected


# --- way 2: trust_remote_code, llava_compare not importable ------------------------------------------
REMOTE_SCRIPT = r'''
import sys
try:
    import llava_compare  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("llava_compare is importable in the isolated interpreter")
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

job = torch.load(sys.argv[1], weights_only=True)
results = {}
for name, folder in job["folders"].items():
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    prompt = processor.apply_chat_template(job["messages"], add_generation_prompt=True)
    enc = processor(text=prompt, images=[Image.open(p) for p in job["images"]], return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=job["ids"][name], pixel_values=job["pixels"][name]).logits
        out = model.generate(**enc, max_new_tokens=job["max_new_tokens"], do_sample=False)
    results[name] = {
        "model": type(model).__module__ + "." + type(model).__name__, "processor": type(processor).__name__,
        "ids": enc["input_ids"], "logits": logits,
        "text": processor.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()}
results["loaded"] = sorted(m for m in sys.modules if "llava_compare" in m and "transformers_modules" not in m
                           or "__editable__" in m)
torch.save(results, sys.argv[2])
'''


def isolated_python(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``script`` with this venv's packages but without site processing: no .pth file runs, so
    the editable install's finder is never installed, and ``-P`` keeps the script's folder (and
    the repo) off ``sys.path``."""
    path = tmp_path / "script.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], HF_HOME=str(tmp_path / "hf_home"),
               HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    return subprocess.run([sys.executable, "-S", "-P", str(path), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_way2_remote_code_and_llava_hf_without_llava_compare(native_export, hf_export, stage2, mlp_stage,
                                                            images, tmp_path):
    jobs = {"native": (native_export, stage2), "llava_hf": (hf_export, mlp_stage)}
    job = {"folders": {}, "ids": {}, "pixels": {}, "images": images, "messages": MESSAGES, "max_new_tokens": NEW_TOKENS}
    expected = {}
    for name, (folder, (_, trained, processor, builder)) in jobs.items():
        ids, pixels = encode(processor, builder, images)
        job["folders"][name], job["ids"][name], job["pixels"][name] = str(folder), ids, pixels
        expected[name] = (ids, logits_of(trained, ids, pixels), answer_of(trained, processor, builder, images))
    torch.save(job, tmp_path / "job.pt")
    proc = isolated_python(tmp_path, REMOTE_SCRIPT, str(tmp_path / "job.pt"), str(tmp_path / "res.pt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(tmp_path / "res.pt", weights_only=True)
    assert res["loaded"] == []  # neither llava_compare nor its editable finder was imported
    assert res["native"]["model"].startswith("transformers_modules.")
    assert res["native"]["model"].endswith("modeling_llava_compare.LlavaCompareForConditionalGeneration")
    assert res["llava_hf"]["model"] == "transformers.models.llava.modeling_llava.LlavaForConditionalGeneration"
    assert res["llava_hf"]["processor"] == "LlavaProcessor"
    for name, way in (("native", "2-remote-code"), ("llava_hf", "3-llava-hf-no-package")):
        ids, logits, text = expected[name]
        assert res[name]["ids"].tolist() == ids.tolist(), name
        assert max_diff(res[name]["logits"].float(), logits, way) < ATOL, name
        assert res[name]["text"] == text, name


# --- way 3: transformers' own LLaVA -------------------------------------------------------------------
def test_way3_llava_hf_same_logits_prompt_and_text(hf_export, mlp_stage, images, capsys):
    from PIL import Image
    from transformers import (AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration,
                              LlavaProcessor)

    _, trained, processor, builder = mlp_stage
    model, info = LlavaForConditionalGeneration.from_pretrained(hf_export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(AutoModelForImageTextToText.from_pretrained(hf_export)) is LlavaForConditionalGeneration
    hf_proc = AutoProcessor.from_pretrained(hf_export)
    assert type(hf_proc) is LlavaProcessor
    cfg = json.loads((hf_export / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["image_seq_length"] == trained.get_base_model().tokens_per_image
    # -2 of the 2-layer tower, made absolute: the layer above it is cut
    assert cfg["image_token_index"] == processor.image_token_id and cfg["vision_feature_layer"] == 1
    assert cfg["vision_feature_select_strategy"] == "default" and cfg["projector_hidden_act"] == "gelu"
    assert "auto_map" not in cfg and not list(hf_export.glob("*.py"))
    assert len(list(hf_export.glob("model-*.safetensors"))) > 1

    ids, pixels = encode(processor, builder, images)
    enc = hf_proc(text=hf_proc.apply_chat_template(MESSAGES, add_generation_prompt=True),
                  images=[Image.open(p) for p in images], return_tensors="pt")
    assert enc["input_ids"].tolist() == ids.tolist() and torch.allclose(enc["pixel_values"], pixels)
    assert max_diff(logits_of(model, ids, pixels), logits_of(trained, ids, pixels), "3-llava-hf") < ATOL
    expected = answer_of(trained, processor, builder, images)
    with torch.no_grad():
        out = model.eval().generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert hf_proc.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == expected
    printed = run_cli(["generate", str(hf_export), "--image", images[0], "--image", images[1],
                       "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)], capsys)
    assert printed.strip() == expected
    card = (hf_export / "README.md").read_text()
    assert "LlavaForConditionalGeneration" in card
    assert "| eval_results.json | blur | 4 | accuracy 0.750 (chance 0.500) |" in card
    assert "| eval/results.json | change | 3 | exact match 0.333, token F1 0.500 |" in card
    assert set(json.loads((hf_export / "eval_results.json").read_text())) == {"eval_results.json", "eval/results.json"}
    assert "datasets:\n- org/compare-data" in card


# --- what the export contains ------------------------------------------------------------------------
def _compressor(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.compressor.state_dict().items()}


def test_merged_export_contains_the_trained_compressor(native_export, stage2, stage2_run, images, tmp_path):
    from transformers import AutoModelForImageTextToText

    stage_dir, trained, processor, builder = stage2
    exported = _compressor(AutoModelForImageTextToText.from_pretrained(native_export))
    start = _compressor(stage2_run[0])  # the stage-1 compressor stage 2 started from
    for k, v in _compressor(trained.get_base_model()).items():
        assert torch.equal(exported[k], v)
    assert any(not torch.equal(exported[k], start[k]) for k in exported)

    # Change the compressor in a checkpoint, export the checkpoint, reload: the change is there.
    copy = tmp_path / "stage2"
    shutil.copytree(stage_dir, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    tensors = load_file(str(copy / "trainable.safetensors"))
    g = torch.Generator().manual_seed(0)
    changed = {k: v + 0.5 * torch.randn(v.shape, generator=g) if ".compressor." in k else v
               for k, v in tensors.items()}
    (copy / "checkpoint-7").mkdir()
    save_file(changed, str(copy / "checkpoint-7" / "trainable.safetensors"))
    ids, pixels = encode(processor, builder, images)
    reloaded = {}
    for variant in ("finished", "unfinished"):
        if variant == "unfinished":  # the run has not written its final files yet
            (copy / "compressor.safetensors").unlink()
            shutil.rmtree(copy / "adapter")
        out = tmp_path / f"export_{variant}"
        assert cli_main(["export", str(copy / "checkpoint-7"), str(out)]) == 0
        model = AutoModelForImageTextToText.from_pretrained(out)
        for k, v in _compressor(model).items():
            assert torch.equal(v, changed[f"base_model.model.compressor.{k}"]), (variant, k)
        reloaded[variant] = logits_of(model, ids, pixels)
    assert torch.allclose(reloaded["finished"], reloaded["unfinished"], atol=1e-5)
    assert float((reloaded["finished"] - logits_of(trained, ids, pixels)).abs().max()) > 1e-3


def test_no_merge_export_keeps_a_peft_adapter(stage2, images, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from llava_compare.loading import load

    stage_dir, trained, processor, builder = stage2
    out = tmp_path / "adapter_export"
    assert cli_main(["export", str(stage_dir), str(out), "--no-merge"]) == 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()  # the top folder stays a plain model folder
    weights = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in weights)
    assert json.loads((out / "llava_compare.json").read_text())["export"]["adapter"] == "adapter"
    assert 'subfolder="adapter"' in (out / "README.md").read_text()

    ids, pixels = encode(processor, builder, images)
    reference = logits_of(trained, ids, pixels)
    base = AutoModelForImageTextToText.from_pretrained(out)
    assert float((logits_of(base, ids, pixels) - reference).abs().max()) > 1e-3  # LoRA matters
    with_adapter = PeftModel.from_pretrained(base, str(out), subfolder="adapter")
    assert max_diff(logits_of(with_adapter, ids, pixels), reference, "1-native-adapter") < ATOL
    model, proc, _ = load(out)  # generate/eval merge it themselves
    assert max_diff(logits_of(model, ids, pixels), reference, "1-native-adapter-merged") < ATOL


def test_export_refuses_clearly(stage2, tmp_path, capsys):
    stage_dir = str(stage2[0])
    with pytest.raises(SystemExit, match="needs the 'mlp' compressor.*resampler"):
        cli_main(["export", stage_dir, str(tmp_path / "a"), "--format", "llava-hf"])
    assert not (tmp_path / "a").exists()
    with pytest.raises(SystemExit, match="drop --no-merge"):
        cli_main(["export", stage_dir, str(tmp_path / "b"), "--format", "llava-hf", "--no-merge"])
    with pytest.raises(SystemExit, match="neither a llava_compare stage output"):
        cli_main(["export", str(tmp_path), str(tmp_path / "c")])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not empty"):
        cli_main(["export", stage_dir, str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="not a previous llava_compare export"):
        cli_main(["export", stage_dir, str(tmp_path / "d"), "--overwrite"])
    assert (tmp_path / "d" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as e:  # no way to pass a token on the command line
        cli_main(["export", stage_dir, str(tmp_path / "e"), "--push-to-hub", "org/x", "--token", "t"])
    assert e.value.code == 2
    capsys.readouterr()


# --- upload ------------------------------------------------------------------------------------------
MARKER = "hf_MARKERtoken0123456789abcdefXYZ"


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """HfApi's create_repo / create_branch / upload_folder replaced by a local stand-in that records
    each call, the token huggingface_hub itself resolves, and "uploads" into a hub-cache layout."""
    import huggingface_hub
    from huggingface_hub import HfApi

    cache = tmp_path / "hub_cache"
    calls: list[tuple[str, dict]] = []

    def record(name, api, kwargs):
        assert "token" not in kwargs and api.token is None  # never handed a token
        resolved = huggingface_hub.get_token()  # what HfApi will send: found by huggingface_hub itself
        calls.append((name, {**kwargs, "resolved_token_is_env": resolved == os.environ.get("HF_TOKEN")}))

    def create_repo(self, repo_id, **kwargs):
        record("create_repo", self, {"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        record("create_branch", self, {"repo_id": repo_id, **kwargs})

    def upload_folder(self, **kwargs):
        record("upload_folder", self, kwargs)
        repo = cache / f"models--{kwargs['repo_id'].replace('/', '--')}"
        commit = f"{len(calls):040x}"
        shutil.copytree(kwargs["folder_path"], repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / (kwargs.get("revision") or "main")).write_text(commit)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_file"))
    return calls


def test_push_uses_the_environment_token_and_never_writes_or_logs_it(fake_hub, mlp_stage, images, tmp_path,
                                                                      monkeypatch, caplog, capsys):
    monkeypatch.setenv("HF_TOKEN", MARKER)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    stage_dir, trained, processor, builder = mlp_stage
    out = tmp_path / "pushed"
    printed = run_cli(["export", str(stage_dir), str(out), "--no-merge", "--push-to-hub", "org/compare-tiny",
                       "--private", "--revision", "dev"], capsys)
    assert "pushed to https://huggingface.co/org/compare-tiny (revision dev)" in printed
    names = [c[0] for c in fake_hub]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create, branch, upload = (c[1] for c in fake_hub)
    assert create["repo_id"] == "org/compare-tiny" and create["private"] is True and create["exist_ok"] is True
    assert branch["branch"] == "dev" and upload["revision"] == "dev" and upload["folder_path"] == str(out)
    assert all(c[1]["resolved_token_is_env"] for c in fake_hub)  # huggingface_hub found it by itself
    assert 'PeftModel.from_pretrained(model, "org/compare-tiny"' in (out / "README.md").read_text()
    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == "org/compare-tiny"

    # a second, public push to main; then the hub id works for generate (offline, from the cache)
    printed += run_cli(["export", str(stage_dir), str(out), "--overwrite", "--no-merge",
                        "--push-to-hub", "org/compare-tiny"], capsys)
    assert fake_hub[-2][0] == "create_repo" and fake_hub[-2][1]["private"] is None
    assert fake_hub[-1][1]["revision"] is None
    expected = answer_of(trained, processor, builder, images)
    printed_gen = run_cli(["generate", "org/compare-tiny", "--image", images[0], "--image", images[1],
                           "--prompt", PROMPT, "--max-new-tokens", str(NEW_TOKENS)], capsys)
    assert printed_gen.strip() == expected

    captured = capsys.readouterr()
    logs = caplog.text + printed + printed_gen + captured.out + captured.err
    assert MARKER not in logs
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    for path in written:
        assert MARKER.encode() not in path.read_bytes(), path


def test_push_without_a_token_fails_clearly(fake_hub, mlp_stage, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="set HF_TOKEN in the environment or run `hf auth login`"):
        cli_main(["export", str(mlp_stage[0]), str(tmp_path / "o"), "--push-to-hub", "org/x"])
    assert fake_hub == [] and not (tmp_path / "o").exists()  # refused before exporting anything
    capsys.readouterr()
