"""The model card (README.md) of an export: base models, training, resolved config, evaluation
results found in the stage output, and usage snippets for the export's format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

EVAL_RESULTS = "eval_results.json"
TINY = "tiny random (built from config)"


def find_eval_results(stage_dir: Path) -> dict[str, Any]:
    """Evaluation summaries in the stage output: ``eval_results.json`` (a summary) or the eval
    module's ``results.json`` (``{..., "metrics": summary}``), at the top or one folder down
    (``eval/`` is where training writes them), keyed by relative path."""
    found = {}
    for name in (EVAL_RESULTS, "results.json"):
        for path in [stage_dir / name, *sorted(stage_dir.glob(f"*/{name}"))]:
            if not path.is_file() or path.parent.name.startswith("checkpoint-"):
                continue
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            summary = data.get("metrics", data) if isinstance(data, dict) else None
            if isinstance(summary, dict) and ("tasks" in summary or "overall_2image_mc" in summary):
                found[str(path.relative_to(stage_dir))] = summary
    return found


def _eval_table(results: Mapping[str, Any]) -> str:
    rows = []
    for name, res in results.items():
        for task, m in res.get("tasks", {}).items():
            value = (f"accuracy {m['accuracy']:.3f} (chance {m['chance']:.3f})" if "accuracy" in m
                     else f"exact match {m.get('exact_match', 0):.3f}, token F1 {m.get('f1', 0):.3f}")
            rows.append(f"| {name} | {task} | {m.get('n', '')} | {value} |")
        o = res.get("overall_2image_mc")
        if o:
            rows.append(f"| {name} | **overall (2-image MC)** | {o['n']} | accuracy {o['accuracy']:.3f} "
                        f"(chance {o['chance']:.3f}) |")
    if not rows:
        return "No evaluation results were found in the stage output."
    return "| file | task | n | result |\n|---|---|---|---|\n" + "\n".join(rows)


def _usage(fmt: str, adapter: str | None, where: str) -> str:
    images = 'images = [Image.open("a.png"), Image.open("b.png")]'
    messages = ('messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},\n'
                '                                      {"type": "text", "text": "Which image is sharper?"}]}]')
    run = ("prompt = processor.apply_chat_template(messages, add_generation_prompt=True)\n"
           "inputs = processor(text=prompt, images=images, return_tensors=\"pt\")\n"
           "out = model.generate(**inputs, max_new_tokens=32, do_sample=False)\n"
           "print(processor.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))")
    peft = (f'\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(model, "{where}", '
            f'subfolder="{adapter}").merge_and_unload()' if adapter else "")
    if fmt == "llava-hf":
        return f"""This folder is a plain transformers LLaVA checkpoint: no custom code is needed.

1. / 2. With or without `llava_compare` installed, transformers' own classes load it:

```python
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor  # = LlavaForConditionalGeneration / LlavaProcessor

model = AutoModelForImageTextToText.from_pretrained("{where}")
processor = AutoProcessor.from_pretrained("{where}")
{images}
{messages}
{run}
```

3. The training code's generation CLI:
   `llava-compare generate {where} --image a.png --image b.png --prompt "Which image is sharper?"`

4. vLLM (CLIP and SigLIP towers; not DINOv2) and lmms-eval read it as written:
   `vllm serve {where} --limit-mm-per-prompt '{{"image": 4}}'`;
   `python -m lmms_eval --model llava_hf --model_args pretrained={where},device_map=auto --tasks TASK`
"""
    return f"""1. With `llava_compare` installed (`pip install llava_compare`), importing it registers the classes:

```python
from PIL import Image
import llava_compare  # registers LlavaCompare* with the Auto classes
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{where}"){peft}
processor = AutoProcessor.from_pretrained("{where}")
{images}
{messages}
{run}
```

or from the command line (`--stream` prints tokens as they come):
`llava-compare generate {where} --image a.png --image b.png --prompt "Which image is sharper?" --stream`

2. Without `llava_compare`: the modeling code ships in this folder (`*_llava_compare.py`):

```python
model = AutoModelForImageTextToText.from_pretrained("{where}", trust_remote_code=True){peft}
processor = AutoProcessor.from_pretrained("{where}", trust_remote_code=True)
```

3. transformers' own `LlavaForConditionalGeneration` (no custom code) needs the `mlp` compressor:
re-export with `llava-compare export CHECKPOINT OUT_DIR --format llava-hf`.
"""


def _system_text(system: str | None) -> str:
    if system is None:
        return "the template's default"
    return "none (empty)" if not system else f"`{system}`"


def model_card(meta: Mapping[str, Any], fmt: str, merged: bool, adapter: str | None,
               eval_results: Mapping[str, Any], where: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData
    from omegaconf import OmegaConf

    from ..model.offline_weights import origin

    mcfg = meta.get("model", {})
    vision = (mcfg.get("vision") or {}).get("name_or_path")
    llm = (mcfg.get("llm") or {}).get("name_or_path")
    # Offline demo weights (``offline:KIND``) are named by their original hub ids, with licences.
    licences = [f"- `{o[0]}`: {o[1]}" for o in map(origin, (vision, llm)) if o]
    licence_text = ("\nLicences of the weights this model contains:\n" + "\n".join(licences) + "\n") if licences else ""
    vision, llm = (origin(vision) or (vision,))[0], (origin(llm) or (llm,))[0]
    config = meta.get("config", {})
    data = config.get("data", {}) if isinstance(config, dict) else {}
    sources = [s.get("path") for s in data.get("train", []) if isinstance(s, dict) and s.get("path")]
    hub_datasets = [p for p in sources if p.count("/") == 1 and not Path(p).suffix and not Path(p).exists()]
    card_data = ModelCardData(
        base_model=[m for m in (vision, llm) if m] or None, datasets=hub_datasets or None,
        library_name="transformers", pipeline_tag="image-text-to-text",
        tags=["llava_compare", "llava", "multi-image", "image-comparison",
              f"compressor-{(mcfg.get('compressor') or {}).get('type', 'mlp')}"],
    )
    stage = meta.get("stage", {})
    peft = meta.get("peft", {})
    lora = (f"LoRA r {peft.get('r')}, alpha {peft.get('alpha')} on the LLM "
            + ("(merged into the weights)" if merged else f"(kept as a PEFT adapter in `{adapter}/`)")
            if stage.get("train_llm") == "lora" else f"LLM: {stage.get('train_llm', 'frozen')}")
    resolved = OmegaConf.to_yaml(OmegaConf.create(config)) if config else "(not recorded)\n"
    body = f"""
# llava_compare model

A multi-image LLaVA-style model that compares images (ViT -> visual-token compressor -> LLM),
trained with `llava_compare` and exported as `{fmt}`.

## Base models

- Vision tower: {f"`{vision}`" if vision else TINY}
- LLM: {f"`{llm}`" if llm else TINY}
- Compressor: `{json.dumps(mcfg.get('compressor', {}))}`, vision feature layer {mcfg.get('vision_feature_layer', -2)}
{licence_text}
## Training

- Recipe: `{meta.get('recipe')}`; stage `{stage.get('name')}` (compressor trained: {stage.get('train_compressor')},
  vision tower trained: {stage.get('train_vision')})
- {lora}
- Initialised from: `{meta.get('init_from') or 'the base models'}`
- Training data: {", ".join(f"`{s}`" for s in sources) or "(not recorded)"}
- Prompt format: conversation template `{data.get('conversation_template', 'auto')}`, image markers
  `{data.get('image_marker', 'interleaved')}` (`{data.get('marker_template', 'Image {k}: ')}`), system prompt
  {_system_text(data.get('system_prompt'))}. The processor's chat template reproduces it
  (`llava_compare.json` records it for `llava-compare generate` / `eval`).

<details><summary>Resolved training config</summary>

```yaml
{resolved}```

</details>

## Evaluation

{_eval_table(eval_results)}

## Usage

{_usage(fmt, adapter, where)}"""
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}"))
