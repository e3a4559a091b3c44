"""Recipe-level hooks (train/hooks.py): named in the config, called at each point of a run in
order, with what exists by then; an extra source a hook adds is trained on; a hook's eval
replaces the default one. The demo's own work comes through the default hooks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llava_compare.data.formats import SourceSpec
from llava_compare.train.hooks import Hooks, RunHooks, resolve
from tests.conftest import TINY_OVERRIDES


class Recorder(RunHooks):
    """Records each point it is called at, with what the run holds by then."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.extra: str | None = None  # a training source to add

    def before_model(self, ctx):
        self.seen.append(("before_model", ctx.model))

    def before_data(self, ctx):
        self.seen.append(("before_data", ctx.on_whole_model(lambda: ctx.model is not None)))
        ctx.extra_sources.append(SourceSpec(path=self.extra))

    def before_stage(self, ctx):
        self.seen.append(("before_stage", len(ctx.examples)))

    def trainer_ready(self, ctx, trainer):
        self.seen.append(("trainer_ready", trainer.state.global_step))

    def evaluate(self, ctx, model):
        self.seen.append(("evaluate", None))
        return {"from": "hook"}


RECORDER = Recorder()


def test_names_resolve_to_objects_and_classes_are_made():
    assert resolve("tests.train.test_hooks:RECORDER") is RECORDER
    assert isinstance(resolve("tests.train.test_hooks:Recorder"), Recorder)
    for bad in ("tests.train.test_hooks", "tests.train.test_hooks:Missing", "no.such.module:X"):
        with pytest.raises(ValueError, match="hooks:"):
            resolve(bad)


def test_the_first_eval_that_answers_wins():
    class Quiet(RunHooks):
        pass

    class Answers(RunHooks):
        def __init__(self, value):
            self.value = value

        def evaluate(self, ctx, model):
            return self.value

    hooks = Hooks()
    hooks.hooks = [Quiet(), Answers(None), Answers({"a": 1}), Answers({"b": 2})]
    assert hooks.evaluate(None, None) == {"a": 1}
    assert Hooks().evaluate(None, None) is None


def test_the_demo_hooks_are_the_default():
    from llava_compare.train.config import compose_config

    assert list(compose_config(["recipe=stage2_lora"]).hooks) == ["llava_compare.demo.hooks:DemoHooks"]


def test_a_run_calls_each_point_in_order(synth_dir, tmp_path, monkeypatch):
    from llava_compare.train.config import compose_config
    from llava_compare.train.main import run

    rows = json.loads((synth_dir / "train.json").read_text())
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([{**r, "id": f"extra-{r['id']}"} for r in rows[:3]]))
    monkeypatch.setattr(RECORDER, "seen", [])
    monkeypatch.setattr(RECORDER, "extra", str(extra))
    cfg = compose_config(["recipe=tiny_demo_stage2", *TINY_OVERRIDES, f"output_dir={tmp_path / 'out'}",
                          "init_from=null", "optim.max_steps=1", "optim.warmup_ratio=0",
                          f"data.train=[{{path: {synth_dir}/train.json}}]", "eval.enabled=true",
                          f"data.eval=[{{path: {synth_dir}/eval.json, max_samples: 2}}]",
                          "hooks=[llava_compare.demo.hooks:DemoHooks,tests.train.test_hooks:RECORDER]"])
    result = run(cfg)
    assert [p for p, _ in RECORDER.seen] == ["before_model", "before_data", "before_stage", "trainer_ready",
                                              "evaluate"]
    seen = dict(RECORDER.seen)
    assert seen["before_model"] is None and seen["before_data"] is True and seen["trainer_ready"] == 0
    assert seen["before_stage"] == len(rows) + 3  # the hook's source joined data.train
    assert result.metrics["eval"] == {"from": "hook"}
