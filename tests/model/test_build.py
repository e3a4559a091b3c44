"""Building from local checkpoint folders (the hub-id path, without a network): the real ViT and
LLM weights are used, the tokenizer gains an <image> token, embeddings are resized."""

import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPConfig, CLIPModel, LlamaConfig, LlamaForCausalLM

from llava_compare.model.build import build_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def hub_like_tokenizer():
    """Like vicuna's: no <image> token and no pad token."""
    words = ["<unk>", "<s>", "</s>", "Image", "1", "2", ":", "Which", "is", "brighter", "?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_build_from_local_folders(tmp_path):
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
    model, processor = build_model({
        "vision": {"name_or_path": str(tmp_path / "vit")}, "llm": {"name_or_path": str(tmp_path / "llm")},
        "compressor": {"type": "pool", "size": 2}, "attn_implementation": "sdpa", "dtype": "float32"})
    vit_params = dict(vit.vision_model.named_parameters())
    ours = dict(model.vision_tower.named_parameters())
    assert len(ours) == len(vit_params)
    for name, p in ours.items():
        assert torch.equal(p, vit_params[name.removeprefix("vision_model.")]), name
    assert torch.equal(model.language_model.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    assert processor.tokens_per_image == 4 and model.config.image_token_id == processor.image_token_id
    assert len(processor.tokenizer) == len(tok) + 1  # <image> added
    assert model.get_input_embeddings().num_embeddings == len(processor.tokenizer)  # resized
    assert processor.tokenizer.pad_token is not None
    inputs = processor(text="Image 1 : <image> Which is brighter ?", images=[Image.new("RGB", (48, 32))])
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(processor.tokenizer)


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
