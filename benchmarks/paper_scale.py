"""Paper-scale token counts: LLaVA-1.5-7B geometry with each compressor, from the recipes.

Co-Instruct's case for compressing visual tokens: at 576 tokens per image, four images and a
conversation do not fit LLaMA-2's 4,096-token context. This computes, for every compressor config
under ``configs/model/compressor/``, the tokens of a 2-image and a 4-image sample with the
``stage2_lora`` recipe's model, and whether they fit the context and the recipe's ``max_length``.
"""

from __future__ import annotations

from typing import Any

from llava_compare.model.compressors import patch_grid, tokens_per_image
from llava_compare.train.config import REPO_ROOT, compose_config

# The recipe's hub ViT (openai/clip-vit-large-patch14-336) is not downloaded here: its geometry.
CLIP_L14_336_GRID = patch_grid(336, 14)  # 24 x 24 = 576 patches
# Text around the images: vicuna_v1 system prompt (~35 LLaMA tokens), "Image k: " markers
# (~4 each), question and answer. An allowance, not a measurement.
TEXT_TOKENS = 128
# The recipe's hub LLM (lmsys/vicuna-7b-v1.5) is not downloaded either: max_position_embeddings of
# its config.json.
LLAMA2_CONTEXT = 4096


def compressors() -> list[str]:
    return sorted(p.stem for p in (REPO_ROOT / "configs/model/compressor").glob("*.yaml"))


def report(recipe: str = "stage2_lora") -> dict[str, Any]:
    rows = {}
    for name in compressors():
        cfg = compose_config([f"recipe={recipe}", f"model/compressor={name}"])
        per_image = tokens_per_image(dict(cfg.model.compressor), CLIP_L14_336_GRID)
        context = LLAMA2_CONTEXT
        row = {"tokens_per_image": per_image, "compressor": dict(cfg.model.compressor)}
        for n in (2, 4):
            total = n * per_image + TEXT_TOKENS
            row[f"{n}_images"] = {"tokens": total, "fits_context": total <= context,
                                  "fits_max_length": total <= cfg.data.max_length}
        row["max_images_in_context"] = (context - TEXT_TOKENS) // per_image
        rows[name] = row
    return {"recipe": recipe, "context": LLAMA2_CONTEXT, "text_tokens": TEXT_TOKENS, "compressors": rows,
            "max_length": int(compose_config([f"recipe={recipe}"]).data.max_length)}


def table(rep: dict[str, Any]) -> str:
    lines = [f"Paper scale (recipe `{rep['recipe']}`: CLIP ViT-L/14-336 + Vicuna-7B v1.5, "
             f"{rep['text_tokens']} text tokens allowed per sample; LLaMA-2 context {rep['context']}, "
             f"recipe max_length {rep['max_length']}):", "",
             f"| compressor | tokens/image | 2-image sample | 4-image sample | 4 images fit {rep['context']}? "
             f"| 4 images fit max_length {rep['max_length']}? | most images in {rep['context']} |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rep["compressors"].items():
        four = r["4_images"]
        lines.append(f"| {name} | {r['tokens_per_image']} | {r['2_images']['tokens']} | {four['tokens']} | "
                     f"{'yes' if four['fits_context'] else 'no'} | {'yes' if four['fits_max_length'] else 'no'} | "
                     f"{r['max_images_in_context']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(report()))
