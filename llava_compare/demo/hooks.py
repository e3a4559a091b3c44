"""``DemoHooks``: the demo's work at the training core's hook points (``train/hooks.py``), each
part only when its config key asks for it."""

from __future__ import annotations

from typing import Any

from ..data.formats import SourceSpec
from ..model.sharding import gathered
from ..train.hooks import RunContext, RunHooks
from .calibration import calibrate_compressor
from .replay import chat_before, replay_from_config
from .synth_data import ensure_synth_data
from .user_report import user_report_run

CHATS = "demo.chats_before"  # ctx.state key: eval.chat_prompts answered before training


class DemoHooks(RunHooks):
    def before_model(self, ctx: RunContext) -> None:
        ensure_synth_data(ctx.cfg)

    def before_data(self, ctx: RunContext) -> None:
        """The replay file (``data.replay``) and the chat answers before training, generated with
        the whole model; the replay file joins the training sources."""
        cfg = ctx.cfg
        if cfg.data.replay is None and not (cfg.eval.enabled and cfg.eval.chat_prompts):
            return

        def generate() -> list[str]:
            replay_from_config(cfg, ctx.model, ctx.processor, ctx.builder)
            return chat_before(cfg, ctx.model, ctx.processor, ctx.builder) if cfg.eval.enabled else []

        ctx.state[CHATS] = ctx.on_whole_model(generate)
        if cfg.data.replay is not None:
            ctx.extra_sources.append(SourceSpec(path=cfg.data.replay.out, weight=cfg.data.replay.weight))

    def before_stage(self, ctx: RunContext) -> None:
        """Calibrate the compressor once, when it asks for it (a stage-1 output's ``init_from``
        brings its calibrated buffers): under ZeRO-3 with the ViT, embeddings and compressor gathered."""
        model = ctx.model
        if not model.compressor.needs_calibration:
            return
        with gathered([*model.vision_tower.parameters(), model.get_input_embeddings().weight]), \
                gathered(model.compressor.parameters(), modify=True):
            calibrate_compressor(model, ctx.examples)

    def evaluate(self, ctx: RunContext, model: Any) -> dict[str, Any] | None:
        if ctx.cfg.eval.mode != "generate":
            return None
        return user_report_run(ctx.cfg, model, ctx.processor, ctx.builder, ctx.state.get(CHATS, []))
