"""Export a trained stage (or one of its checkpoints) as a self-contained model folder, and push it.

``llava-compare export CHECKPOINT OUT_DIR [--no-merge] [--format native|llava-hf]
[--push-to-hub ORG/NAME [--private] [--revision R]]``

``native`` (default) writes ``LlavaCompareForConditionalGeneration`` safetensors shards, config.json
(with ``auto_map``), the processor/tokenizer files (with a chat template reproducing the training
prompt), the standalone ``*_llava_compare.py`` files (``trust_remote_code=True`` without this
package; see :mod:`llava_compare.ship.remote_code`), ``llava_compare.json`` (the training metadata, so
``generate.builder_for`` rebuilds the same template / markers / system prompt) and a model card.
LoRA is merged into the LLM, unless ``--no-merge``: then the folder holds the base model (with the
trained compressor) and ``adapter/`` a PEFT adapter (``PeftModel.from_pretrained(model, OUT_DIR,
subfolder="adapter")``). ``llava-hf`` (``mlp`` compressor only) writes a folder transformers'
own ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` load with no custom code.

Loading: :func:`load_exported` (used by ``generate`` / ``eval`` for export folders and hub ids).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..loading import ADAPTER_DIR, COMPRESSOR, META, TRAINABLE, load_named, load_trained, unwrap
from ..data.processor import LlavaCompareProcessor
from ..data.sample import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)

FORMATS = ("native", "llava-hf")
EVAL_RESULTS = "eval_results.json"
TINY = "tiny random (built from config)"


# --- reading a stage output ------------------------------------------------------------------------
def is_export(path: str | Path) -> bool:
    """True for a folder this module wrote (its llava_compare.json has an ``export`` entry)."""
    meta = Path(path) / META
    return meta.is_file() and "export" in json.loads(meta.read_text())


def read_meta(ref: str | Path) -> dict[str, Any]:
    """``llava_compare.json`` of a local folder or a hub repo ({} when there is none)."""
    path = Path(ref)
    if (path / META).is_file():
        return json.loads((path / META).read_text())
    if path.exists():
        return {}
    try:  # a hub id: cached or downloaded like the rest of the model files
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(ref), META)).read_text())
    except Exception:  # noqa: BLE001  (not a repo, no such file, offline and not cached)
        return {}


def resolve_checkpoint(ref: str | Path) -> tuple[Path, Path | None]:
    """(stage output folder, checkpoint-N folder or None) for a stage output or a checkpoint."""
    path = Path(ref)
    if (path / META).is_file() and not is_export(path):
        return path, None
    if (path / TRAINABLE).is_file() and (path.parent / META).is_file():
        return path.parent, path
    raise FileNotFoundError(
        f"{ref} is neither a llava_compare stage output (a folder with {META}) nor one of its "
        f"checkpoint-N folders ({TRAINABLE} in a stage output folder)")


def _unfinished_base(stage_dir: Path) -> nn.Module:
    """The model a not-yet-finished stage started from, with LoRA added as the stage adds it."""
    from ..model.build import build_model
    from ..model.modeling import LlavaCompareForConditionalGeneration
    from ..train.stages import configure_stage

    meta = json.loads((stage_dir / META).read_text())
    if (stage_dir / "model.safetensors").is_file() or (stage_dir / "model.safetensors.index.json").is_file():
        model = LlavaCompareForConditionalGeneration.from_pretrained(stage_dir)
    elif meta.get("init_from") and (Path(meta["init_from"]) / META).is_file():
        model, _ = load_trained(meta["init_from"], merge=True)
    else:
        model, _ = build_model({**meta["model"], "compressor_init": None})
    if meta.get("stage", {}).get("train_llm") == "lora":
        model = configure_stage(model, meta["stage"], meta["peft"])
    return model


def load_stage(ref: str | Path, merge: bool = True) -> tuple[nn.Module, LlavaCompareProcessor, Path]:
    """(model, processor, stage folder) of a stage output or checkpoint-N folder, in eval mode.

    With ``merge`` LoRA is merged into the LLM; without, a LoRA stage gives a ``PeftModel``.
    A checkpoint of a run that has not finished yet (no ``compressor.safetensors`` / ``adapter/``
    in its stage folder) is rebuilt from the stage's start model plus the checkpoint's parameters.
    """
    stage_dir, ckpt = resolve_checkpoint(ref)
    if (stage_dir / COMPRESSOR).is_file():
        model, processor = load_trained(stage_dir, merge=False)
    elif ckpt is not None:
        model = _unfinished_base(stage_dir)
        processor = LlavaCompareProcessor.from_pretrained(ckpt if (ckpt / "processor_config.json").is_file()
                                                          else stage_dir)
    else:
        raise FileNotFoundError(f"{stage_dir} has not finished (no {COMPRESSOR}); export one of its "
                                "checkpoint-N folders instead")
    if ckpt is not None:
        from safetensors.torch import load_file

        load_named(model, load_file(str(ckpt / TRAINABLE)))
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.eval(), processor, stage_dir


# --- chat template ---------------------------------------------------------------------------------
def _jinja_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def vicuna_chat_template(tokenizer: Any, marker_template: str | None, system: str,
                         bos: bool | None = None) -> str:
    """A Jinja chat template rendering exactly what ``ConversationBuilder`` (vicuna_v1) builds.

    Content may be a string with ``<image>`` placeholders or a list of ``{"type": "image"}`` /
    ``{"type": "text", "text": ...}`` items (joined with newlines, as ``question_sample`` does);
    the k-th image of the dialogue gets the training marker (``Image k: ``). The BOS token is
    written only when the tokenizer does not add it itself, so both ``processor(text=...)`` and
    ``apply_chat_template(tokenize=True)`` give one BOS.
    """
    if bos is None:
        adds = tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
        bos = tokenizer.bos_token_id is not None and not adds
    if marker_template:
        pre, _, post = marker_template.partition("{k}")
        pre, post = (s.replace("{{", "{").replace("}}", "}") for s in (pre, post))
        marker = f"{_jinja_str(pre)} ~ ns.k ~ {_jinja_str(post)}" if "{k}" in marker_template else _jinja_str(pre)
    else:
        marker = "''"
    img = _jinja_str(IMAGE_PLACEHOLDER)
    return "\n".join([
        "{%- set ns = namespace(k=0, text='', system=" + _jinja_str(system) + ", found=false, out="
        + (_jinja_str(tokenizer.bos_token) if bos else "''") + ", pending='') -%}",
        # the first system message replaces the default system prompt (wherever it stands)
        "{%- for message in messages -%}{%- if message['role'] == 'system' and not ns.found -%}"
        "{%- set ns.found = true -%}{%- if message['content'] is string -%}{%- set ns.system = message['content'] -%}"
        "{%- else -%}{%- set ns.system = message['content'] | selectattr('type', 'equalto', 'text') "
        "| map(attribute='text') | join('\\n') -%}{%- endif -%}{%- endif -%}{%- endfor -%}",
        "{%- set ns.pending = ns.system -%}",
        "{%- for message in messages -%}{%- if message['role'] != 'system' -%}",
        "{%- set ns.text = '' -%}",
        "{%- if message['content'] is string -%}",
        "{%- for part in message['content'].split(" + img + ") -%}",
        "{%- if not loop.first -%}{%- set ns.k = ns.k + 1 -%}{%- set ns.text = ns.text ~ " + marker + " ~ " + img
        + " -%}{%- endif -%}{%- set ns.text = ns.text ~ part -%}{%- endfor -%}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if not loop.first -%}{%- set ns.text = ns.text ~ '\\n' -%}{%- endif -%}",
        "{%- if item['type'] == 'image' -%}{%- set ns.k = ns.k + 1 -%}{%- set ns.text = ns.text ~ " + marker
        + " ~ " + img + " -%}",
        "{%- elif item['type'] == 'text' -%}{%- set ns.text = ns.text ~ item['text'] -%}{%- endif -%}",
        "{%- endfor -%}{%- endif -%}",
        "{%- if message['role'] == 'user' -%}",
        "{%- set ns.pending = ns.pending ~ (' ' if ns.pending else '') ~ 'USER: ' ~ ns.text -%}",
        "{%- if not loop.last or add_generation_prompt -%}",
        "{%- set ns.pending = ns.pending ~ ' ASSISTANT:' -%}{%- endif -%}",
        "{%- elif message['role'] == 'assistant' -%}",
        "{%- set ns.out = ns.out ~ ns.pending ~ ' ' ~ ns.text ~ " + _jinja_str(tokenizer.eos_token or "") + " -%}",
        "{%- set ns.pending = '' -%}{%- endif -%}",
        "{%- endif -%}{%- endfor -%}",
        "{{- ns.out ~ ns.pending -}}",
    ])


def chat_template_for(stage_dir: str | Path, processor: Any) -> str | None:
    """The chat template matching how the stage formatted its training prompts."""
    from ..data.conversation import VICUNA_SYSTEM
    from ..generate import builder_for

    builder = builder_for(stage_dir, processor)
    if builder.template == "chat":  # the LLM's own template: content is a string with markers
        return processor.tokenizer.chat_template
    system = VICUNA_SYSTEM if builder.system is None else builder.system
    return vicuna_chat_template(processor.tokenizer, builder.marker_template, system)


# --- writing ---------------------------------------------------------------------------------------
def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")
        if not is_export(out):
            raise FileExistsError(f"{out} is not a previous llava_compare export; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _update_json(path: Path, **entries: Any) -> None:
    data = json.loads(path.read_text())
    data.update(entries)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_native(model: nn.Module, processor: LlavaCompareProcessor, out: Path, max_shard_size: str,
                  chat_template: str | None, repo_id: str | None) -> str | None:
    """Weights + config (auto_map) + processor + standalone code. Returns the adapter subfolder."""
    from .remote_code import AUTO_MAP, write_remote_code

    adapter = None
    if hasattr(model, "peft_config"):  # --no-merge: adapter in a subfolder, the base beside it
        adapter = ADAPTER_DIR
        # the base this adapter belongs to is the export itself (the hub repo once pushed)
        model.peft_config["default"].base_model_name_or_path = repo_id or str(out.resolve())
        model.save_pretrained(str(out / adapter), save_embedding_layers=False)  # no hub look-ups
        (out / adapter / "README.md").unlink(missing_ok=True)  # peft's empty template; README.md covers it
        model = model.unload()  # the base without LoRA layers (trained compressor included)
    base = unwrap(model)
    base.config.auto_map = dict(AUTO_MAP)
    base.save_pretrained(out, max_shard_size=max_shard_size)
    processor.chat_template = chat_template
    processor.save_pretrained(out)
    _update_json(out / "processor_config.json", auto_map={"AutoProcessor": AUTO_MAP["AutoProcessor"]})
    write_remote_code(out)
    return adapter


def llava_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our weight names -> transformers' ``LlavaForConditionalGeneration`` names."""
    prefixes = [("vision_tower.", "model.vision_tower."),
                ("compressor.proj.0.", "model.multi_modal_projector.linear_1."),
                ("compressor.proj.2.", "model.multi_modal_projector.linear_2."),
                ("language_model.model.", "model.language_model."),
                ("language_model.lm_head.", "lm_head.")]
    out = {}
    for name, tensor in model.state_dict().items():
        new = next((dst + name[len(src):] for src, dst in prefixes if name.startswith(src)), None)
        if new is None:
            raise ValueError(f"no llava-hf name for parameter {name!r}")
        out[new] = tensor.detach().contiguous()
    return out


def check_llava_hf(config: Any) -> None:
    comp = dict(config.compressor)
    if comp.get("type", "mlp") != "mlp" or comp.get("depth", 2) != 2:
        raise ValueError(
            f"--format llava-hf needs the 'mlp' compressor with depth 2 (LLaVA-1.5's projector); this "
            f"model's compressor is {comp}. Export it with --format native (loads with "
            "trust_remote_code=True or `import llava_compare`).")
    if not isinstance(config.vision_feature_layer, int):
        raise ValueError("--format llava-hf needs a single integer vision_feature_layer")


def llava_hf_config(cfg: Any) -> Any:
    """transformers' ``LlavaConfig`` for a model of ours (``mlp`` compressor only): same towers,
    same image token and count. Used by the llava-hf export and by the benchmark's baseline arm."""
    from transformers import LlavaConfig

    check_llava_hf(cfg)
    llava_cfg = LlavaConfig(
        vision_config=cfg.vision_config.to_dict(), text_config=cfg.text_config.to_dict(),
        image_token_index=cfg.image_token_id, image_seq_length=cfg.tokens_per_image,
        vision_feature_layer=cfg.vision_feature_layer, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    llava_cfg.architectures = ["LlavaForConditionalGeneration"]
    return llava_cfg


def _write_llava_hf(model: nn.Module, processor: LlavaCompareProcessor, out: Path, max_shard_size: str,
                    chat_template: str | None) -> None:
    from huggingface_hub import save_torch_state_dict
    from transformers import LlavaProcessor

    cfg = model.config
    llava_cfg = llava_hf_config(cfg)
    llava_cfg.dtype = next(model.parameters()).dtype
    save_torch_state_dict(llava_hf_state_dict(model), out, max_shard_size=max_shard_size,
                          metadata={"format": "pt"})
    llava_cfg.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    hf_proc = LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                             patch_size=cfg.vision_config.patch_size, vision_feature_select_strategy="default",
                             num_additional_image_tokens=1, chat_template=chat_template,
                             image_token=processor.image_token)
    size = processor.image_processor.crop_size
    n = hf_proc._get_num_multimodal_tokens(image_sizes=[[size["height"], size["width"]]]).num_image_tokens[0]
    if n != cfg.tokens_per_image:
        raise ValueError(f"LlavaProcessor would expand an image to {n} tokens, the model needs "
                         f"{cfg.tokens_per_image}; is the image processor's crop size the ViT's?")
    hf_proc.save_pretrained(out)


# --- model card ------------------------------------------------------------------------------------
def _find_eval_results(stage_dir: Path) -> dict[str, Any]:
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

    mcfg = meta.get("model", {})
    vision = (mcfg.get("vision") or {}).get("name_or_path")
    llm = (mcfg.get("llm") or {}).get("name_or_path")
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

A multi-image LLaVA-style model that compares images (CLIP ViT -> visual-token compressor -> LLM),
trained with `llava_compare` and exported as `{fmt}`.

## Base models

- Vision tower: {f"`{vision}`" if vision else TINY}
- LLM: {f"`{llm}`" if llm else TINY}
- Compressor: `{json.dumps(mcfg.get('compressor', {}))}`, vision feature layer {mcfg.get('vision_feature_layer', -2)}

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


# --- the export ------------------------------------------------------------------------------------
def export(checkpoint: str | Path, out_dir: str | Path, merge: bool = True, fmt: str = "native",
           max_shard_size: str | int = "5GB", overwrite: bool = False, repo_id: str | None = None) -> Path:
    """Write an export folder for ``checkpoint`` (a stage output or checkpoint-N folder).

    ``repo_id`` only names the repo in the model card's snippets (pushing is :func:`llava_compare.ship.hub.push_folder`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "llava-hf" and not merge:
        raise ValueError("--format llava-hf writes merged weights only; drop --no-merge (or use --format native)")
    out = Path(out_dir)
    stage_dir, _ = resolve_checkpoint(checkpoint)
    if out.resolve() in (stage_dir.resolve(), Path(checkpoint).resolve()):
        raise ValueError(f"export into a new folder, not into {checkpoint}")
    model, processor, stage_dir = load_stage(checkpoint, merge=merge)
    if fmt == "llava-hf":
        check_llava_hf(unwrap(model).config)  # before anything is written
    _prepare_out(out, overwrite)
    template = chat_template_for(stage_dir, processor)
    adapter = None
    if fmt == "native":
        adapter = _write_native(model, processor, out, max_shard_size, template, repo_id)
    else:
        _write_llava_hf(model, processor, out, max_shard_size, template)
    meta = json.loads((stage_dir / META).read_text())
    meta["export"] = {"format": fmt, "merged": adapter is None, "adapter": adapter,
                      "source": Path(checkpoint).name, "llava_compare_version": _version()}
    (out / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    results = _find_eval_results(stage_dir)
    if results:
        (out / EVAL_RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    (out / "README.md").write_text(model_card(meta, fmt, adapter is None, adapter, results,
                                              repo_id or str(out)))
    log.info("exported %s to %s (%s, %s)", checkpoint, out, fmt, "merged" if adapter is None else "adapter")
    return out


def _version() -> str:
    from .. import __version__

    return __version__


# --- loading an export -----------------------------------------------------------------------------
def load_exported(ref: str | Path) -> tuple[nn.Module, LlavaCompareProcessor]:
    """Model + processor from an export folder or hub id, LoRA merged, in eval mode.

    A ``llava-hf`` export's ``LlavaProcessor`` is wrapped as a ``LlavaCompareProcessor`` (same
    tokenizer and image processor, ``image_seq_length`` tokens per image) so ``generate_answer``
    and ``evaluate`` build exactly the ids they build for the training model.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import llava_compare  # noqa: F401  (registers the Auto classes)

    info = read_meta(ref).get("export", {})
    model = AutoModelForImageTextToText.from_pretrained(str(ref))
    processor = AutoProcessor.from_pretrained(str(ref))
    if info.get("adapter"):
        from peft import PeftModel

        adapter = Path(ref) / info["adapter"]
        if not Path(ref).is_dir():  # a hub id: fetch the subfolder (peft's offline subfolder lookup is unreliable)
            from huggingface_hub import snapshot_download

            adapter = Path(snapshot_download(str(ref), allow_patterns=[f"{info['adapter']}/*"])) / info["adapter"]
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    if not isinstance(processor, LlavaCompareProcessor):
        processor = LlavaCompareProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                                          tokens_per_image=model.config.image_seq_length,
                                          image_token=processor.image_token)
    return model.eval(), processor


# --- CLI -------------------------------------------------------------------------------------------
def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained stage as a shareable model folder (and push it)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a stage output folder or one of its checkpoint-N folders")
    p.add_argument("out_dir", help="the folder to write (new or empty)")
    p.add_argument("--no-merge", action="store_true",
                   help="keep LoRA as a PEFT adapter in OUT_DIR/adapter instead of merging it")
    p.add_argument("--format", default="native", choices=FORMATS,
                   help="native (LlavaCompare classes + remote code) or llava-hf (transformers' "
                        "LlavaForConditionalGeneration; mlp compressor only)")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds a previous export")
    p.add_argument("--push-to-hub", metavar="ORG/NAME", default=None,
                   help="upload OUT_DIR to this model repo; the token comes from HF_TOKEN or `hf auth login`")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    p.add_argument("--revision", default=None, help="upload to this branch (created if missing)")
    p.add_argument("--commit-message", default=None)
    p.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if (args.private or args.revision) and not args.push_to_hub:
        raise SystemExit("--private / --revision only apply with --push-to-hub ORG/NAME")
    if args.push_to_hub:
        from .hub import HubAuthError, require_token

        try:
            require_token()
        except HubAuthError as e:
            raise SystemExit(str(e)) from e
    try:
        out = export(args.checkpoint, args.out_dir, merge=not args.no_merge, fmt=args.format,
                     max_shard_size=args.max_shard_size, overwrite=args.overwrite, repo_id=args.push_to_hub)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f"export failed: {e}") from e
    info = read_meta(out)["export"]
    print(f"exported {args.checkpoint} -> {out} ({args.format}, "
          f"{'LoRA adapter in ' + info['adapter'] + '/' if info['adapter'] else 'merged'})")
    if args.push_to_hub:
        from .hub import HubAuthError, push_folder

        try:
            url = push_folder(out, args.push_to_hub, private=args.private, revision=args.revision,
                              commit_message=args.commit_message)
        except HubAuthError as e:
            raise SystemExit(str(e)) from e
        print(f"pushed to {url}" + (f" (revision {args.revision})" if args.revision else ""))
    return 0


__all__ = ["export", "load_stage", "load_exported", "is_export", "read_meta", "llava_hf_state_dict",
           "vicuna_chat_template", "chat_template_for", "model_card"]
