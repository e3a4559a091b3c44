"""What a client of a ``--format llava-hf`` export sees: the tensor names and config fields of the
published llava-hf checkpoints (which vLLM and transformers 4.x read), a reload into transformers'
``LlavaForConditionalGeneration`` with the identical state dict and no warning for CLIP and SigLIP
towers, the project's own greedy tokens, nothing left behind by a failed export, and a warning
naming the clients of a DINOv2-tower export."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from llava_compare.cli import main as cli_main
from llava_compare.generate import generate_answer, question_sample
from llava_compare.loading import builder_for
from llava_compare.model.build import build_model
from llava_compare.ship.export import export
from llava_compare.train.outputs import save_base, save_trained
from tests.conftest import tiny_model_cfg

PROMPT = "Which image is brighter?"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": PROMPT}]}]

# --- facts: the published layout ---------------------------------------------------------------------
# Tensor names of llava-hf/llava-1.5-7b-hf, from its model.safetensors.index.json ("weight_map"; the
# folder transformers' convert_llava_weights_to_hf.py wrote, the layout vLLM's llava.py and
# transformers 4.x load), with each layer index written N. Its vision tower is CLIP ViT-L/14-336
# (24 layers), its LLM Vicuna-7B (LLaMA, untied lm_head).
LLAVA_15_7B_NAMES = {
    "language_model.lm_head.weight",
    "language_model.model.embed_tokens.weight",
    "language_model.model.norm.weight",
    *(f"language_model.model.layers.N.{m}.weight" for m in (
        "input_layernorm", "post_attention_layernorm", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
        "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj")),
    *(f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")),
    "vision_tower.vision_model.embeddings.class_embedding",
    "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "vision_tower.vision_model.embeddings.position_embedding.weight",
    *(f"vision_tower.vision_model.{m}.{p}" for m in ("pre_layrnorm", "post_layernorm") for p in ("weight", "bias")),
    *(f"vision_tower.vision_model.encoder.layers.N.{m}.{p}" for m in (
        "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2",
        "self_attn.k_proj", "self_attn.out_proj", "self_attn.q_proj", "self_attn.v_proj") for p in ("weight", "bias")),
}
# The same checkpoint's config.json / processor files: the fields a client reads to build the
# model and to expand <image> (transformers' LlavaProcessor, vLLM's LlavaProcessingInfo).
LLAVA_15_7B_CONFIG = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
                      "vision_feature_select_strategy": "default", "projector_hidden_act": "gelu",
                      "vision_config.model_type": "clip_vision_model", "text_config.model_type": "llama"}
LLAVA_15_7B_PROCESSOR = {"processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default",
                         "num_additional_image_tokens": 1}
LLAVA_15_7B_PREPROCESSOR = {"image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor"}

# A SigLIP tower in the same layout: transformers 4.x's SiglipVisionModel names (as in
# google/siglip-so400m-patch14-384's vision_model.* tensors and the SigLIP llava-hf checkpoints,
# e.g. llava-hf/llava-onevision-qwen2-0.5b-ov-hf), under vision_tower.
SIGLIP_TOWER_NAMES = {
    "vision_tower.vision_model.embeddings.patch_embedding.weight",
    "vision_tower.vision_model.embeddings.patch_embedding.bias",
    "vision_tower.vision_model.embeddings.position_embedding.weight",
    *(f"vision_tower.vision_model.encoder.layers.N.{m}.{p}" for m in (
        "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2",
        "self_attn.k_proj", "self_attn.out_proj", "self_attn.q_proj", "self_attn.v_proj") for p in ("weight", "bias")),
    *(f"vision_tower.vision_model.post_layernorm.{p}" for p in ("weight", "bias")),
    "vision_tower.vision_model.head.probe",
    "vision_tower.vision_model.head.attention.in_proj_weight",
    "vision_tower.vision_model.head.attention.in_proj_bias",
    *(f"vision_tower.vision_model.head.{m}.{p}" for m in (
        "attention.out_proj", "layernorm", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")),
}


# --- helpers -----------------------------------------------------------------------------------------
def make_stage(out: Path, tower: str, feature_layer: int = -2, **vision: object
               ) -> tuple[Path, torch.nn.Module, object]:
    """A finished tiny ``mlp`` stage output with a ``tower`` ViT (nothing trained: the export
    of the model built from config)."""
    cfg = tiny_model_cfg(type="mlp", depth=2)
    cfg["vision"].update(type=tower, **vision)
    cfg["vision_feature_layer"] = feature_layer
    model, processor = build_model(cfg)
    data = {"train": [{"path": "org/data"}], "image_marker": "interleaved", "marker_template": "Image {k}: ",
            "conversation_template": "auto", "system_prompt": None}
    save_base(model, processor, out, {"model": cfg, "stage": {"train_llm": "frozen"}, "recipe": "t", "peft": {},
                                      "init_from": None, "config": {"model": cfg, "data": data}})
    save_trained(model, out, trained={})
    return out, model.eval(), processor


def saved_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    return names


def layer_pattern(names: set[str]) -> set[str]:
    return {re.sub(r"\.layers\.\d+\.", ".layers.N.", n) for n in names}


@contextlib.contextmanager
def transformers_warnings():
    """Records transformers' own log warnings (its logger does not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    paths = []
    for k in range(2):
        pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        paths.append(str(folder / f"{k}.png"))
        Image.fromarray(pixels).save(paths[-1])
    return paths


class Exports(dict):
    """tower -> (stage dir, llava-hf export, in-memory model, processor), made on first use (so a
    tower whose export fails fails only its own tests)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, tower: str):
        stage, model, processor = make_stage(self.root / tower / "stage", tower)
        hf = self.root / tower / "hf"
        assert cli_main(["export", str(stage), str(hf), "--format", "llava-hf"]) == 0
        self[tower] = (stage, hf, model, processor)
        return self[tower]


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("exports"))


# --- the published layout ----------------------------------------------------------------------------
def test_clip_export_has_the_published_llava_hf_layout(exports):
    _, hf, model, _ = exports["clip"]
    assert layer_pattern(saved_names(hf)) == LLAVA_15_7B_NAMES
    cfg = json.loads((hf / "config.json").read_text())
    flat = {**cfg, **{f"{k}.model_type": cfg[k]["model_type"] for k in ("vision_config", "text_config")}}
    assert {k: flat[k] for k in LLAVA_15_7B_CONFIG} == LLAVA_15_7B_CONFIG
    # the cut tower: 1 of 2 layers kept for -2, its absolute index, so both clients select the same state
    assert cfg["vision_config"]["num_hidden_layers"] == 1 and cfg["vision_feature_layer"] == 1
    assert layer_pattern({n for n in saved_names(hf) if ".encoder.layers." in n}) != set()
    assert {n for n in saved_names(hf) if ".encoder.layers.1." in n} == set()
    # vocab padded to a multiple of 64; the padding ids suppressed
    assert cfg["text_config"]["vocab_size"] == model.get_input_embeddings().weight.shape[0]
    assert cfg["text_config"]["vocab_size"] % 64 == 0
    assert cfg["text_config"]["rope_theta"] == cfg["text_config"]["rope_parameters"]["rope_theta"]  # 4.x reads this
    proc = json.loads((hf / "processor_config.json").read_text())
    assert {k: proc[k] for k in LLAVA_15_7B_PROCESSOR} == LLAVA_15_7B_PROCESSOR
    pre = json.loads((hf / "preprocessor_config.json").read_text())  # where transformers 4.x looks
    assert {k: pre[k] for k in LLAVA_15_7B_PREPROCESSOR} == LLAVA_15_7B_PREPROCESSOR
    assert pre["crop_size"] == {"height": 32, "width": 32}
    tok = json.loads((hf / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast"  # 5.x's TokenizersBackend is unknown to 4.x
    assert isinstance(tok.get("extra_special_tokens", {}), dict)  # 4.x calls .items() on it
    assert tok["model_input_names"] == ["input_ids", "attention_mask"]  # 4.x's generate refuses token_type_ids


def test_siglip_export_keeps_every_patch(exports):
    _, hf, model, _ = exports["siglip"]
    tower = {n for n in layer_pattern(saved_names(hf)) if n.startswith("vision_tower.")}
    assert tower == SIGLIP_TOWER_NAMES
    cfg = json.loads((hf / "config.json").read_text())
    proc = json.loads((hf / "processor_config.json").read_text())
    # SigLIP has no CLS: "default" would drop a real patch (token count mismatch at generate)
    assert cfg["vision_feature_select_strategy"] == proc["vision_feature_select_strategy"] == "full"
    assert proc["num_additional_image_tokens"] == 0
    assert cfg["image_seq_length"] == model.config.tokens_per_image == 16


# --- transformers' own LLaVA reloads the same model ---------------------------------------------------
@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_reload_gives_the_identical_state_dict_without_warnings(exports, tower):
    from transformers import LlavaForConditionalGeneration

    from llava_compare.ship.llava_hf import llava_hf_state_dict

    _, hf_dir, model, _ = exports[tower]
    with transformers_warnings() as records:
        hf, info = LlavaForConditionalGeneration.from_pretrained(hf_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert [r.getMessage() for r in records] == []
    want = llava_hf_state_dict(model)
    got = hf.state_dict()
    assert set(got) == set(want)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_greedy_tokens_equal_the_projects_generate(exports, images, tower):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    stage, hf_dir, model, processor = exports[tower]
    builder = builder_for(stage, processor)
    sample = question_sample(PROMPT, images)
    ours = processor(conversation=sample, builder=builder, images=images, add_generation_prompt=True)
    hf_proc = AutoProcessor.from_pretrained(hf_dir)
    prompt = hf_proc.apply_chat_template(MESSAGES, add_generation_prompt=True)
    enc = hf_proc(text=prompt, images=[Image.open(p) for p in images], return_tensors="pt")
    assert enc["input_ids"].tolist() == ours["input_ids"].tolist()
    assert torch.allclose(enc["pixel_values"], ours["pixel_values"])
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.no_grad():
        want = model.generate(**ours, **kwargs)
        got = hf.generate(**enc, **kwargs)
    assert got.tolist() == want.tolist()
    text = hf_proc.decode(hf.generate(**enc, max_new_tokens=8, do_sample=False)[0, enc["input_ids"].shape[1]:],
                          skip_special_tokens=True).strip()
    assert text == generate_answer(model, processor, builder, sample, max_new_tokens=8)


# --- writes are all or nothing -----------------------------------------------------------------------
def _fail_mid_write(monkeypatch) -> None:
    """The processor files fail after the weights and the config are written (a full disk)."""
    from transformers import LlavaProcessor

    def boom(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(LlavaProcessor, "save_pretrained", boom)


def test_a_failed_export_leaves_nothing_behind(exports, tmp_path, monkeypatch):
    stage = exports["clip"][0]
    previous = tmp_path / "previous"
    export(stage, previous, fmt="llava-hf")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    _fail_mid_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        export(stage, tmp_path / "new", fmt="llava-hf")
    assert not (tmp_path / "new").exists()
    with pytest.raises(OSError, match="No space left"):  # a failed --overwrite keeps the previous export
        export(stage, previous, fmt="llava-hf", overwrite=True)
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]  # no temporary folder left


# --- towers only some clients take ---------------------------------------------------------------------
def test_dinov2_export_warns_which_clients_load_it(tmp_path, caplog):
    from transformers import LlavaForConditionalGeneration

    # -1: the whole tower (a tiny DINOv2 cut below its top does not reload from its saved config,
    # model/vision.py truncate_tower leaves out_features at the old depth)
    stage, model, _ = make_stage(tmp_path / "stage", "dinov2", feature_layer=-1)
    with caplog.at_level(logging.WARNING, logger="llava_compare"):
        export(stage, tmp_path / "hf", fmt="llava-hf")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and r.name.startswith("llava_compare")]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "dinov2" in warnings[0] and "transformers" in warnings[0] and "vLLM does not" in warnings[0]
    names = saved_names(tmp_path / "hf")
    # transformers 4.x's Dinov2Model names (5.x renames them back on load)
    assert "vision_tower.encoder.layer.0.attention.attention.query.weight" in names
    hf, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vision_feature_select_strategy"] == "default"


def test_towers_llava_cannot_express_are_refused(tmp_path):
    stage, _, _ = make_stage(tmp_path / "stage", "dinov2", feature_layer=-1, num_register_tokens=4)
    with pytest.raises(ValueError, match="CLS \\+ registers"):
        export(stage, tmp_path / "hf", fmt="llava-hf")
    assert not (tmp_path / "hf").exists()


def test_rope_of_a_llama3_text_config_is_written_for_both_transformers():
    """transformers 4.x reads RoPE from ``rope_theta`` / ``rope_scaling`` only: without them a
    LLaMA-3 export would run at 4.x's default theta (10,000) with no error."""
    from transformers import LlamaConfig

    from llava_compare.ship.llava_hf import _v4_text_config

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = {"text_config": LlamaConfig(rope_parameters=dict(rope), max_position_embeddings=131072).to_dict()}
    _v4_text_config(config)
    text = config["text_config"]
    assert text["rope_theta"] == 500000.0
    assert text["rope_scaling"] == {k: v for k, v in rope.items() if k != "rope_theta"}
    assert LlamaConfig.from_dict(text).rope_parameters == rope  # 5.x reads the same RoPE back


def test_a_cut_dinov2_tower_exports_a_config_that_loads(tmp_path):
    """truncate_tower leaves DINOv2's backbone ``out_features`` at the uncut depth; the exported
    vision config must still load (written from the in-memory model: such a tiny stage output
    does not reload itself, see make_stage's DINOv2 callers)."""
    from transformers import LlavaForConditionalGeneration

    from llava_compare.ship.llava_hf import write_llava_hf

    cfg = tiny_model_cfg(type="mlp", depth=2)
    cfg["vision"]["type"] = "dinov2"
    model, processor = build_model(cfg)  # -2 of 2 layers: cut to 1
    assert model.config.vision_config.num_hidden_layers == 1
    write_llava_hf(model.eval(), processor, tmp_path, "5GB", None)
    hf, info = LlavaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = torch.tensor([[1, *[processor.image_token_id] * model.config.tokens_per_image, 5]])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, pixel_values=pixels).logits,
                                   model(input_ids=ids, pixel_values=pixels).logits, rtol=0, atol=1e-5)
