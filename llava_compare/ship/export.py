"""Export a trained stage (or one of its checkpoints) as a self-contained model folder, and push it.

``llava-compare export CHECKPOINT OUT_DIR [--no-merge] [--format native|llava-hf]
[--push-to-hub ORG/NAME [--private] [--revision R]]``

``native`` (default) writes ``LlavaCompareForConditionalGeneration`` safetensors shards, config.json
(with ``auto_map``), the processor/tokenizer files (with a chat template reproducing the training
prompt), the standalone ``*_llava_compare.py`` files (``trust_remote_code=True`` without this
package; see :mod:`llava_compare.ship.remote_code`), ``llava_compare.json`` (the training metadata, so
``loading.builder_for`` rebuilds the same template / markers / system prompt) and a model card.
LoRA is merged into the LLM, unless ``--no-merge``: then the folder holds the base model (with the
trained compressor) and ``adapter/`` a PEFT adapter (``PeftModel.from_pretrained(model, OUT_DIR,
subfolder="adapter")``). ``llava-hf`` (``mlp`` compressor only) writes a folder transformers'
own ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` load with no custom code.

The parts: ``native``, ``llava_hf``, ``chat_template``, ``model_card`` (this module is the command).
Loading an export back: :func:`llava_compare.loading.load`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..loading import META, is_export, load, read_meta, resolve_checkpoint, unwrap
from .chat_template import chat_template_for
from .llava_hf import check_llava_hf, write_llava_hf
from .model_card import EVAL_RESULTS, find_eval_results, model_card
from .native import write_native

log = logging.getLogger(__name__)

FORMATS = ("native", "llava-hf")


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds something other than a previous export (before any work)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")
        if not is_export(out):
            raise FileExistsError(f"{out} is not a previous llava_compare export; refusing to overwrite it")


@contextmanager
def _staged(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` only when the block finishes: an
    export that fails (or is killed) mid-write leaves no half-written folder under ``out``'s name,
    and a previous export replaced with ``--overwrite`` stays until the new one is complete."""
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():  # empty, or a previous export (checked above): out of the way first
            old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    model, processor, _ = load(checkpoint, merge=merge)
    if fmt == "llava-hf":
        check_llava_hf(unwrap(model).config)  # before anything is written
    with _staged(out, overwrite) as tmp:
        adapter = _write(model, processor, stage_dir, checkpoint, tmp, out, fmt, max_shard_size, repo_id)
    log.info("exported %s to %s (%s, %s)", checkpoint, out, fmt, "merged" if adapter is None else "adapter")
    return out


def _write(model: Any, processor: Any, stage_dir: Path, checkpoint: str | Path, out: Path, final: Path,
           fmt: str, max_shard_size: str | int, repo_id: str | None) -> str | None:
    """Every file of the export into ``out`` (the staging folder that becomes ``final``; files
    that name the export's own place name ``final`` or the hub repo). Returns the adapter subfolder."""
    template = chat_template_for(stage_dir, processor)
    adapter = None
    if fmt == "native":
        adapter = write_native(model, processor, out, max_shard_size, template, repo_id or str(final.resolve()))
    else:
        write_llava_hf(model, processor, out, max_shard_size, template)
    meta = read_meta(stage_dir)
    meta["export"] = {"format": fmt, "merged": adapter is None, "adapter": adapter,
                      "source": Path(checkpoint).name, "llava_compare_version": _version()}
    (out / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    results = find_eval_results(stage_dir)
    if results:
        (out / EVAL_RESULTS).write_text(json.dumps(results, indent=2) + "\n")
    (out / "README.md").write_text(model_card(meta, fmt, adapter is None, adapter, results,
                                              repo_id or str(final)))
    return adapter


def _version() -> str:
    from .. import __version__

    return __version__


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


__all__ = ["FORMATS", "export", "add_cli", "run_cli"]
