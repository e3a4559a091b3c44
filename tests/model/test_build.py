"""Building from local checkpoint folders (the hub-id path, without a network): the real ViT and
LLM weights are used, the tokenizer gains an <image> token, embeddings are resized."""

import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

from llava_compare.model.build import build_model
from llava_compare.model.vision import encoder_layers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def hub_like_tokenizer():
    """Like vicuna's: no <image> token and no pad token."""
    words = ["<unk>", "<s>", "</s>", "Image", "1", "2", ":", "Which", "is", "brighter", "?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def local_checkpoints(tmp_path):
    """A full CLIP folder and a hub-like LLaMA folder (11 tokens, no <image>, no pad); returns
    (CLIPModel, LlamaForCausalLM, tokenizer)."""
    torch.manual_seed(1)
    # a full CLIP checkpoint (text + vision), as openai/clip-vit-large-patch14-336 is on the hub
    vit = CLIPModel(CLIPConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)))
    vit.save_pretrained(tmp_path / "vit")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    tok = hub_like_tokenizer()
    tok.save_pretrained(tmp_path / "llm")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2, intermediate_size=128))
    llm.save_pretrained(tmp_path / "llm")
    return vit, llm, tok


def local_cfg(tmp_path, **compressor) -> dict:
    return {"vision": {"name_or_path": str(tmp_path / "vit")}, "llm": {"name_or_path": str(tmp_path / "llm")},
            "compressor": compressor or {"type": "pool", "size": 2}, "attn_implementation": "sdpa",
            "dtype": "float32"}


def test_build_from_local_folders(tmp_path):
    vit, llm, tok = local_checkpoints(tmp_path)
    model, processor = build_model(local_cfg(tmp_path))
    vit_params = dict(vit.vision_model.named_parameters())
    ours = dict(model.vision_tower.named_parameters())
    # layer -2 of 2 reads the first layer's output: the second layer is cut, the rest is the file's
    assert set(vit_params) - {n.removeprefix("vision_model.") for n in ours} == {
        n for n in vit_params if n.startswith("encoder.layers.1.")}
    for name, p in ours.items():
        assert torch.equal(p, vit_params[name.removeprefix("vision_model.")]), name
    assert torch.equal(model.language_model.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    assert processor.tokens_per_image == 4 and model.config.image_token_id == processor.image_token_id
    assert len(processor.tokenizer) == len(tok) + 1  # <image> added
    assert model.get_input_embeddings().num_embeddings == 64  # resized, padded to a multiple of 64
    assert processor.tokenizer.pad_token is not None
    inputs = processor(text="Image 1 : <image> Which is brighter ?", images=[Image.new("RGB", (48, 32))])
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == 64


def test_build_processor_matches_build_model_without_weights():
    """The validator's processor (no weights loaded) is the one training builds."""
    from llava_compare.model.build import build_processor
    from tests.conftest import tiny_model_cfg

    for compressor in ({"type": "resampler", "num_queries": 7, "depth": 1, "heads": 2}, {"type": "pool", "size": 2}):
        cfg = tiny_model_cfg(**compressor)
        _, built = build_model(cfg)
        alone = build_processor(cfg)
        assert alone.tokens_per_image == built.tokens_per_image == (7 if compressor["type"] == "resampler" else 4)
        assert alone.tokenizer.get_vocab() == built.tokenizer.get_vocab()
        assert alone.image_token_id == built.image_token_id
        assert alone.image_processor.to_dict() == built.image_processor.to_dict()


PADDED_PROMPT = "Image 1 : <image> Which is brighter ?"


def test_resized_embeddings_are_padded_to_64_and_padding_is_never_generated(tmp_path):
    """The tokenizer grows from 11 to 12 ids (<image>); the embeddings and LM head get 64 rows,
    the config says so, and generate() never emits one of the 52 padding ids, even when their
    logits are the largest (they are no token the tokenizer can decode)."""
    local_checkpoints(tmp_path)
    model, processor = build_model(local_cfg(tmp_path))
    model.eval()
    n_tok = len(processor.tokenizer)
    assert n_tok == 12
    for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
        assert emb.weight.shape[0] == 64 and emb.weight.shape[0] % 64 == 0
    assert model.config.text_config.vocab_size == 64
    assert model.generation_config.suppress_tokens == list(range(12, 64))
    inputs = processor(text=PADDED_PROMPT, images=[Image.new("RGB", (32, 32))])

    def favour_padding(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., n_tok:] += 1e4  # every padding id beats every real token
        return logits

    handle = model.get_output_embeddings().register_forward_hook(favour_padding)
    try:
        with torch.no_grad():
            greedy = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            sampled = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=True, top_k=0)
    finally:
        handle.remove()
    for out in (greedy, sampled):
        assert int(out[0, inputs["input_ids"].shape[1]:].max()) < n_tok


def test_padded_embeddings_round_trip_save_load_and_llava_hf_export(tmp_path):
    """A stage of the padded model saves, reloads (Auto classes, the stage loader) and exports to
    llava-hf with 64 rows, the same logits, and the padding still suppressed."""
    import json

    from transformers import AutoModelForImageTextToText, GenerationConfig, LlavaForConditionalGeneration

    from llava_compare.loading import load
    from llava_compare.ship.export import export
    from llava_compare.train.outputs import save_base, save_trained

    local_checkpoints(tmp_path)
    cfg = local_cfg(tmp_path, type="mlp", depth=2)
    model, processor = build_model(cfg)
    model.eval()
    inputs = processor(text=PADDED_PROMPT, images=[Image.new("RGB", (32, 32), (90, 20, 200))])
    with torch.no_grad():
        want = model(**inputs).logits
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "saved").eval()
    assert loaded.get_output_embeddings().weight.shape[0] == 64
    assert loaded.generation_config.suppress_tokens == list(range(12, 64))

    stage = tmp_path / "stage"
    data = {"train": [{"path": "org/data"}], "image_marker": "interleaved", "marker_template": "Image {k}: ",
            "conversation_template": "vicuna_v1", "system_prompt": None}
    save_base(model, processor, stage, {"model": cfg, "stage": {"train_llm": "frozen"}, "recipe": "t",
                                        "peft": {}, "init_from": None, "config": {"model": cfg, "data": data}})
    save_trained(model, stage, trained={})
    reloaded = load(stage)[0]
    hf_dir = export(stage, tmp_path / "hf", fmt="llava-hf")
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    assert json.loads((hf_dir / "config.json").read_text())["text_config"]["vocab_size"] == 64
    assert GenerationConfig.from_pretrained(hf_dir).suppress_tokens == list(range(12, 64))
    with torch.no_grad():
        for other in (loaded, reloaded, hf):
            assert other.get_input_embeddings().weight.shape[0] == 64
            torch.testing.assert_close(other(**inputs).logits, want, rtol=0, atol=1e-5)


def test_loaded_towers_share_one_config_with_the_model_and_run_the_requested_kernel(tmp_path):
    """A tower loaded from a folder has its own config object; the model's sub-config must be that
    object, or ``set_attn_implementation`` gives the sub-model the top-level kernel (sdpa) while the
    sub-config says the requested one, and cut layers / resized vocabularies reach one copy only."""
    local_checkpoints(tmp_path)
    model, _ = build_model({**local_cfg(tmp_path), "attn_implementation": "eager"})
    assert model.config.text_config is model.language_model.config
    assert model.config.vision_config is model.vision_tower.config
    attention = model.language_model.model.layers[0].self_attn
    assert attention.config._attn_implementation == "eager"
    assert model.vision_tower.config._attn_implementation == "eager"
    assert model.config.text_config.vocab_size == model.get_input_embeddings().num_embeddings == 64
    assert model.config.vision_config.num_hidden_layers == len(encoder_layers(model.vision_tower)) == 1
