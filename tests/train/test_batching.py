"""How micro-batches form (train/batching.py, data/bins.py): the kernel decides one row or rows,
``packing: auto`` packs only under varlen kernels, every shipped stage-2 recipe packs or groups by
length, ``attn_implementation=auto`` checks the GPU before choosing FA2, the planned bins hold
every sample once within the budget, and a binned run logs what each step trained on and
normalises its loss over the whole accumulated batch."""

from __future__ import annotations

import logging
import random
import sys
import types

import pytest
import torch
from transformers import TrainerCallback

from llava_compare.data.bins import BinnedDataset, best_fit_decreasing, plan_bins, plan_length_groups
from llava_compare.model import attention
from llava_compare.train.batching import batching, training_set
from llava_compare.train.config import REPO_ROOT, compose_config
from tests.conftest import stage_cfg


@pytest.fixture
def fa2_usable(monkeypatch):
    """This machine as a CUDA box with flash-attn installed on a GPU of capability ``cap``."""
    def make(cap: tuple[int, int] = (9, 0)) -> None:
        monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cap)
    return make


def test_auto_picks_fa2_only_on_a_gpu_that_runs_it(fa2_usable, caplog):
    caplog.set_level(logging.INFO, logger=attention.__name__)
    assert attention.resolve_attn_implementation("auto") == "sdpa"  # this CPU machine
    fa2_usable((7, 5))  # a T4: flash-attn 2 refuses it
    assert attention.resolve_attn_implementation("auto") == "sdpa"
    assert "compute capability 7.5" in caplog.text
    fa2_usable((8, 0))
    assert attention.resolve_attn_implementation("auto") == "flash_attention_2"
    with pytest.raises(ValueError, match="model.attn_implementation must be one of"):
        attention.resolve_attn_implementation("flash")


STAGE2_RECIPES = sorted(p.stem for p in (REPO_ROOT / "recipes").glob("*.yaml")
                        if compose_config([f"recipe={p.stem}"]).stage.name == "instruct")


def test_the_stage2_recipes_are_found():
    assert {"stage2_lora", "stage2_qlora", "demo_stage2"} <= set(STAGE2_RECIPES)


@pytest.mark.parametrize("recipe", STAGE2_RECIPES)
@pytest.mark.parametrize("gpu", [False, True])
def test_every_stage2_recipe_packs_or_groups_by_length(recipe, gpu, fa2_usable):
    """Mixed 2-4-image batches padded to their longest sample waste ~30-40% of the tokens: every
    shipped stage-2 recipe avoids it, on this CPU (sdpa) and on an FA2 GPU."""
    if gpu:
        fa2_usable()
    plan = batching(compose_config([f"recipe={recipe}", "model.attn_implementation=auto"]))
    assert plan.packed or plan.group_by_length, plan.describe()
    if recipe.startswith("stage2") and gpu:
        assert plan.packed and plan.one_row and plan.kernel == "flash_attention_2"


def test_auto_packs_under_fa2_and_groups_under_sdpa(fa2_usable):
    cfg = compose_config(["model=tiny", "data.packing=auto", "model.attn_implementation=auto"])
    plan = batching(cfg)
    assert (plan.kernel, plan.packed, plan.group_by_length) == ("sdpa", False, True)
    fa2_usable()
    plan = batching(cfg)
    assert (plan.kernel, plan.packed, plan.one_row, plan.group_by_length) == ("flash_attention_2", True, True, False)
    plan = batching(compose_config(["model=tiny", "data.packing=true", "model.attn_implementation=eager"]))
    assert plan.packed and not plan.one_row


@pytest.mark.parametrize("overrides, message", [
    (["data.packing=maybe"], "data.packing must be true, false or auto"),
    (["data.token_budget=4096"], "data.token_budget plans packed micro-batches"),
    (["data.packing=true", "data.token_budget=100", "data.max_length=512"], "a sample of max_length would not fit"),
])
def test_inconsistent_batching_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        batching(compose_config(["model=tiny", *overrides]))


def test_packing_under_a_whole_row_kernel_warns_once(caplog):
    attention.warn_packing_cost.cache_clear()
    with caplog.at_level(logging.WARNING, logger=attention.__name__):
        for _ in range(3):
            attention.warn_packing_cost("sdpa")
        attention.warn_packing_cost("flash_attention_2")
    assert len([r for r in caplog.records if "packing under sdpa" in r.message]) == 1
    assert "flash_attention_2" not in caplog.text.split("packing under")[0]


def length_mix(n: int, seed: int = 0) -> list[int]:
    """Co-Instruct-like token counts: 1-4 images of 576 tokens, text of 20-250 tokens."""
    rng = random.Random(seed)
    return [576 * rng.randint(1, 4) + rng.randint(20, 250) for _ in range(n)]


def test_best_fit_decreasing_fills_rows_within_capacity():
    lengths = [40, 35, 32, 29, 19, 16]
    assert best_fit_decreasing(lengths, 40) == [[0], [1], [2], [3], [4, 5]]
    assert best_fit_decreasing([50, 10], 40) == [[0], [1]]  # too long: a row of its own


@pytest.mark.parametrize("row_tokens", [None, 2560])
def test_planned_bins_hold_every_sample_once_within_the_budget(row_tokens):
    lengths, budget = length_mix(3000), 16384
    bins = plan_bins(lengths, budget, row_tokens, seed=0, window=1000)
    drawn = [i for b in bins for row in b for i in row]
    assert sorted(drawn) == list(range(len(lengths)))
    capacity = budget if row_tokens is None else row_tokens
    assert all(sum(lengths[i] for i in row) <= capacity for b in bins for row in b)
    assert all(len(b) == (1 if row_tokens is None else budget // row_tokens) for b in bins[:-1])
    computed = sum(capacity for b in bins for _ in b)  # every row computed at its capacity
    assert sum(lengths) / computed >= 0.95  # best-fit over a window fills the rows


def test_bin_plan_is_the_seeds_and_differs_between_seeds():
    lengths = length_mix(500)
    assert plan_bins(lengths, 8192, None, 1, 200) == plan_bins(lengths, 8192, None, 1, 200)
    assert plan_bins(lengths, 8192, None, 1, 200) != plan_bins(lengths, 8192, None, 2, 200)


class GradAtStep(TrainerCallback):
    """The LLM's first trainable gradient just before the first optimizer step, and the logs."""

    def __init__(self):
        self.grad, self.logs = None, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grad is None:
            p = next(p for n, p in model.named_parameters() if p.requires_grad and "language_model" in n)
            self.grad = p.grad.detach().clone()


def test_binned_run_logs_each_step_and_normalises_over_the_accumulated_batch(synth_dir, tmp_path, monkeypatch):
    """All 40 samples in one optimizer step of several planned bins (one micro-batch each,
    gradient accumulation): the step's gradient is the gradient of the summed token loss over
    all of them divided by their labelled tokens, as one padded batch of all 40 gives; the log
    reports samples, tokens and the useful fraction per step."""
    from llava_compare.data.collator import CompareCollator
    from llava_compare.model.build import build_model
    from llava_compare.train import main

    bins = []
    real_training_set = main.training_set
    monkeypatch.setattr(main, "training_set", lambda *a: bins.append(real_training_set(*a)) or bins[-1])
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "run", 1, "data.packing=true",
                    "data.token_budget=1024", "optim.max_grad_norm=1e9", "optim.lr=0", "optim.llm_lr=0",
                    "optim.vision_lr=0", "data.max_length=512", "init_from=null")
    n_bins = len(real_training_set(batching(cfg), main.make_dataset(cfg, build_model(cfg.model)[1]), cfg.seed))
    cfg.optim.per_device_batch_size, cfg.optim.global_batch_size = 1, n_bins  # the step draws every bin
    grads = GradAtStep()
    monkeypatch.setattr(main, "CompareTrainer", _with_callback(main.CompareTrainer, grads))
    main.run(cfg)
    assert n_bins > 1 and len(bins[0]) == n_bins

    model, processor = build_model(cfg.model)  # the same seed: the weights the run started from
    model = main.configure_stage(model, cfg.stage, cfg.peft).train()
    dataset = main.make_dataset(cfg, processor, model=model)
    batch = CompareCollator(processor.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    batch.pop("sample_ids")
    model(**batch).loss.backward()
    expected = next(p for n, p in model.named_parameters() if p.requires_grad and "language_model" in n).grad
    torch.testing.assert_close(grads.grad, expected, rtol=1e-4, atol=1e-6)

    logged = [h for h in grads.logs if "samples_per_step" in h]
    assert len(logged) == 1 and logged[0]["samples_per_step"] == len(dataset)
    assert 0 < logged[0]["useful_token_fraction"] <= 1 and logged[0]["tokens_per_step"] > 0


def test_length_groups_hold_every_sample_once_in_groups_of_similar_length():
    """group_by_length without a sampler override: micro-batches of ``size`` samples planned from
    the estimates (sorted within each run of 50 groups), then shuffled; a pure function of the seed."""
    rng = random.Random(0)
    lengths = [rng.randint(10, 1000) for _ in range(1003)]
    groups = plan_length_groups(lengths, 4, seed=7)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert sorted(len(g) for g in groups) == [3] + [4] * 250  # 1003 = 250 x 4 + 3
    assert plan_length_groups(lengths, 4, seed=7) == groups and plan_length_groups(lengths, 4, seed=8) != groups
    spread = sum(max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in groups) / len(groups)
    shuffled = [list(range(len(lengths)))[i:i + 4] for i in range(0, len(lengths), 4)]
    random_spread = sum(max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in shuffled) / len(shuffled)
    assert spread < random_spread / 10  # padding to the group's longest wastes little


def test_a_length_grouped_run_gives_the_trainer_one_planned_group_per_micro_batch():
    """The Trainer's own random sampler draws whole groups: per-device batch 1, each item a group
    of ``optim.per_device_batch_size`` samples."""
    from llava_compare.train.main import training_args

    cfg = compose_config(["recipe=tiny_demo_stage2", "data.packing=false", "data.group_by_length=true",
                          "optim.per_device_batch_size=4", "optim.global_batch_size=8"])
    plan = batching(cfg)
    assert plan.group_by_length and plan.planned
    args = training_args(cfg, plan)
    assert args.per_device_train_batch_size == 1 and args.gradient_accumulation_steps == 2

    class Estimated(list):
        max_length = 512

        def estimated_lengths(self):
            return [10 * (i % 7) + 5 for i in range(len(self))]

    grouped = training_set(plan, Estimated(range(10)), seed=0, batch_size=4)
    assert isinstance(grouped, BinnedDataset) and sorted(len(b[0]) for b in grouped.bins) == [2, 4, 4]


def _with_callback(trainer_cls, callback):
    class WithCallback(trainer_cls):
        def __init__(self, *args, **kwargs):
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), callback]
            super().__init__(*args, **kwargs)
    return WithCallback



def test_a_curriculum_run_trains_phase_by_phase_through_the_sequential_sampler(synth_dir, tmp_path, monkeypatch):
    """data.curriculum=true: the Trainer's own sequential sampler reads the curriculum order, so
    every micro-batch of phase 0 comes before any of phase 1 (the rows' ``curriculum_phase``)."""
    import json

    from llava_compare.train import main

    rows = json.loads((synth_dir / "train.json").read_text())
    for i, row in enumerate(rows):
        row["curriculum_phase"] = i % 2
        row["image"] = [str(synth_dir / p) for p in row["image"]]
    data = tmp_path / "phased.json"
    data.write_text(json.dumps(rows))
    phase = {r["id"]: r["curriculum_phase"] for r in rows}
    seen: list[list[str]] = []
    real_step = main.CompareTrainer.training_step

    def record(self, model, inputs, *args, **kwargs):
        seen.append(list(inputs.get("sample_ids", [])))
        return real_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(main.CompareTrainer, "training_step", record)
    steps = len(rows) // 4
    cfg = stage_cfg("tiny_demo_stage2", synth_dir, tmp_path / "run", steps, "data.curriculum=true",
                    "data.packing=true", "optim.per_device_batch_size=4", "optim.global_batch_size=4",
                    "init_from=null")
    cfg.data.train = [{"path": str(data)}]
    assert main.training_args(cfg).train_sampling_strategy == "sequential"
    main.run(cfg)
    phases = [phase[s] for batch in seen for s in batch]
    assert len(phases) == len(rows) and phases == sorted(phases), phases


@pytest.mark.parametrize("overrides", [["data.packing=false", "data.group_by_length=true"],
                                       ["data.packing=true", "data.token_budget=4096"]])
def test_a_curriculum_does_not_mix_with_another_sampling_plan(overrides):
    with pytest.raises(ValueError, match="data.curriculum orders the samples itself"):
        batching(compose_config(["model=tiny", "data.curriculum=true", *overrides]))


def test_a_stream_refuses_planned_micro_batches_and_pads_under_auto():
    """Bins and length groups are planned from the whole set's lengths, which a stream does not
    have: refused with what to set; ``packing: auto`` pads under sdpa instead of grouping."""
    base = ["recipe=tiny_demo_stage2", "model.attn_implementation=sdpa", "data.streaming=true"]
    with pytest.raises(ValueError, match="data.token_budget plans bins .* data.streaming=true use data.token_budget=null"):
        batching(compose_config([*base, "data.packing=true", "data.token_budget=4096"]))
    with pytest.raises(ValueError, match="with data.streaming=true set data.group_by_length=false"):
        batching(compose_config([*base, "data.packing=false", "data.group_by_length=true"]))
    plan = batching(compose_config([*base, "data.packing=auto"]))
    assert not plan.packed and not plan.group_by_length
    assert batching(compose_config([*base, "data.packing=true"])).packed
    with pytest.raises(ValueError, match="with data.streaming=true set data.curriculum=false"):
        batching(compose_config([*base, "data.packing=true", "data.curriculum=true"]))
