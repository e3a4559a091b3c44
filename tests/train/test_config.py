"""Every shipped recipe composes against the schema; bad keys fail early, naming valid keys."""

import pytest
from omegaconf import OmegaConf

from llava_compare.train.config import ConfigError, available_recipes, compose_config
from llava_compare.train.main import training_args

REQUIRED = {"tiny_demo_stage1", "tiny_demo_stage2", "stage1_align", "stage2_lora"}


def test_required_recipes_ship():
    assert REQUIRED <= set(available_recipes())


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_composes(recipe):
    cfg = compose_config([f"recipe={recipe}"])
    assert cfg.recipe_name == recipe and cfg.data.train, recipe
    assert cfg.stage.name in ("align", "instruct")
    if cfg.stage.name == "instruct":
        assert cfg.init_from, f"{recipe}: stage 2 must name its stage-1 output"
    training_args(cfg)  # batch arithmetic is consistent


def test_llava15_numbers():
    s1, s2 = compose_config(["recipe=stage1_align"]), compose_config(["recipe=stage2_lora"])
    assert s1.model.vision.name_or_path == "openai/clip-vit-large-patch14-336"
    assert s1.model.llm.name_or_path == "lmsys/vicuna-7b-v1.5"
    assert (s1.optim.lr, s1.optim.global_batch_size, s1.optim.epochs, s1.data.max_length) == (1e-3, 256, 1, 4096)
    assert (s2.peft.r, s2.peft.alpha, s2.optim.llm_lr, s2.optim.lr) == (128, 256, 2e-4, 2e-5)
    assert (s2.optim.global_batch_size, s2.optim.epochs, s2.stage.train_llm) == (128, 1, "lora")


def test_demo_stage2_starts_where_demo_stage1_writes():
    assert compose_config(["recipe=tiny_demo_stage2"]).init_from == compose_config(["recipe=tiny_demo_stage1"]).output_dir


def test_demo_stage3_continues_stage2_on_its_own_data_with_the_same_eval_split():
    """Stage 3 starts from stage 2's output and writes its training mix to its own folder (stage 2's
    data is not regenerated under it); every other synth setting is stage 2's, so the held-out
    split is the same items."""
    s2, s3 = compose_config(["recipe=demo_stage2"]), compose_config(["recipe=demo_stage3"])
    assert s3.init_from == s2.output_dir and s3.output_dir != s2.output_dir
    assert s3.data.synth.dir != s2.data.synth.dir and s3.data.replay.out != s2.data.replay.out
    assert s3.data.synth.train_weights.sharpest > 0 == s2.data.synth.train_weights.sharpest
    same = ("n_train", "n_eval", "n_captions", "seed", "image_size")
    assert [s3.data.synth[k] for k in same] == [s2.data.synth[k] for k in same]
    assert all(str(src.path).startswith(s3.data.synth.dir) for src in [*s3.data.train, *s3.data.eval])


def test_overrides_apply():
    cfg = compose_config(["recipe=tiny_demo_stage1", "optim.lr=0.5", "model/compressor=resampler",
                          "model.compressor.num_queries=8"])
    assert cfg.optim.lr == 0.5
    assert dict(cfg.model.compressor) == {"type": "resampler", "num_queries": 8, "depth": 2, "heads": 8}


def test_misspelled_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys under optim: .*llm_lr"):
        compose_config(["recipe=tiny_demo_stage1", "optim.lrr=1"])


def test_unknown_recipe_lists_available():
    with pytest.raises(ConfigError, match="available: .*tiny_demo_stage1"):
        compose_config(["recipe=nope"])


def test_global_batch_must_divide():
    cfg = compose_config(["recipe=tiny_demo_stage1", "optim.per_device_batch_size=3", "optim.global_batch_size=16"])
    with pytest.raises(ValueError, match="not a multiple"):
        training_args(cfg)


DIST_OPTIONS = ["ddp", "zero2", "zero2_offload", "zero3", "zero3_offload", "fsdp"]


@pytest.mark.parametrize("dist", DIST_OPTIONS)
@pytest.mark.parametrize("recipe", ["stage1_align", "stage2_lora", "stage2_qlora"])
def test_7b_recipes_compose_with_every_dist_option(recipe, dist):
    cfg = compose_config([f"recipe={recipe}", f"dist={dist}"])
    if recipe == "stage2_qlora" and dist.startswith("zero3"):
        with pytest.raises(ValueError, match="ZeRO-3"):
            training_args(cfg)
        return
    if recipe == "stage2_qlora" and dist == "fsdp":  # refused, naming what does work
        with pytest.raises(ValueError, match="not supported with dist=fsdp.*dist=ddp or dist=zero2"):
            training_args(cfg)
        return
    args = training_args(cfg)
    assert bool(args.deepspeed) == dist.startswith("zero")
    assert not args.fsdp  # FSDP2 is applied by train/fsdp.py, never by accelerate
    # DeepSpeed's and FSDP2's optimizer state is checkpointed by CompareTrainer's checkpoint callback
    assert args.save_only_model == (dist != "ddp")
    assert not args.save_total_limit  # complete checkpoints are pruned by CompareTrainer, not the Trainer


@pytest.mark.parametrize("value,expected", [("true", True), ("false", False)])
def test_bf16_true_and_false_reach_training_args(value, expected):
    cfg = compose_config(["recipe=tiny_demo_stage1", f"optim.bf16={value}"])
    assert cfg.optim.bf16 is expected and training_args(cfg).bf16 is expected


@pytest.mark.parametrize("native", [True, False])
def test_bf16_null_is_auto_and_the_default(monkeypatch, native):
    """``optim.bf16`` unset (null): bf16 exactly where the hardware computes it natively."""
    from llava_compare.train import precision

    monkeypatch.setattr(precision, "auto_bf16", lambda: native)
    for extra in ([], ["optim.bf16=null"]):
        cfg = compose_config(["recipe=tiny_demo_stage1", *extra])
        assert cfg.optim.bf16 is None and training_args(cfg).bf16 is native


@pytest.mark.parametrize("recipe", ["demo_stage1", "demo_stage2"])
@pytest.mark.parametrize("flags, bf16", [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True)])
def test_demo_recipes_run_bf16_only_on_cpus_that_compute_it(monkeypatch, recipe, flags, bf16):
    """On an AVX2-only CPU emulated bf16 is several times slower than fp32: the demo runs fp32 there."""
    import torch

    from llava_compare.train import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert training_args(compose_config([f"recipe={recipe}"])).bf16 is bf16


@pytest.mark.parametrize("value", ["auto", "maybe"])
def test_bf16_is_a_bool_or_null(value):
    with pytest.raises(ConfigError, match=f"optim.bf16.*'{value}' is not a valid bool"):
        compose_config(["recipe=tiny_demo_stage1", f"optim.bf16={value}"])


def test_dist_mode_comes_from_its_fields_not_a_name():
    """Each ``dist=`` file holds only the fields that decide the mode, and no two are copies."""
    from itertools import combinations

    from llava_compare.train.config import REPO_ROOT

    files = sorted((REPO_ROOT / "configs" / "dist").glob("*.yaml"))
    assert "none.yaml" not in {f.name for f in files}
    for a, b in combinations(files, 2):
        assert a.read_text() != b.read_text(), f"{a.name} and {b.name} are copies"
    for d in (["dist=ddp"], []):
        assert OmegaConf.to_container(compose_config(["recipe=tiny_demo_stage1", *d]).dist) == {
            "deepspeed": None, "fsdp2": None}
    assert compose_config(["dist=zero3"]).dist.deepspeed == "configs/deepspeed/zero3.json"
    assert compose_config(["dist=fsdp"]).dist.fsdp2


def test_warmup_ratio_is_a_ratio_in_0_1():
    """Transformers 5 reads a warmup_steps below 1 as a ratio and one >= 1 as a step count: a ratio
    of 1 would warm up for one step, so it fails at start."""
    args = training_args(compose_config(["recipe=tiny_demo_stage1", "optim.warmup_ratio=0.25"]))
    assert args.warmup_steps == 0.25 and args.get_warmup_steps(100) == 25
    for value in ("1", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match="optim.warmup_ratio must be in \\[0, 1\\)"):
            compose_config([f"optim.warmup_ratio={value}"])


def test_lora_settings_under_a_stage_without_lora_fail_naming_both():
    with pytest.raises(ConfigError, match="peft=lora .*stage=align.*stage.train_llm=frozen") as err:
        compose_config(["stage=align", "peft=lora"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="peft.r .*stage=instruct_full"):
        compose_config(["recipe=tiny_demo_stage2", "peft.r=8"])


def test_the_stage_decides_lora_and_peft_holds_its_settings():
    defaults = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
    for extra in ([], ["peft=lora"]):
        cfg = compose_config(["stage=instruct_lora", *extra])
        assert OmegaConf.to_container(cfg.peft) == defaults
    assert compose_config(["stage=instruct_lora", "peft.r=8"]).peft.r == 8
    assert compose_config(["recipe=stage2_lora"]).peft.r == 128
    assert "method" not in compose_config(["stage=instruct_lora"]).peft


def test_train_yaml_only_picks_defaults():
    """Every key's default is the schema's: configs/train.yaml lists group choices and nothing else."""
    from llava_compare.train.config import CONFIG_DIR

    train = OmegaConf.load(CONFIG_DIR / "train.yaml")
    assert list(train) == ["defaults"]


@pytest.mark.parametrize("recipe, at", [("demo_stage1", 2 / 3), ("demo_stage2", 2 / 3), ("demo_stage3", 2 / 3)])
def test_demo_recipes_keep_their_lr_where_the_learning_happens(recipe, at):
    """The real-weights demo learns late: stage 2's comparisons stay at a coin flip for ~100 of
    its 300 steps, then drop (measured, README "Demo results"); a cosine schedule had cut the lr to a
    quarter by step 200 and the demo stayed at chance. The Trainer's own scheduler, built from the
    recipe's TrainingArguments, must still give the full lr two thirds of the way in."""
    import torch
    from transformers import get_scheduler

    args = training_args(compose_config([f"recipe={recipe}"]))
    steps = args.max_steps
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(steps),
                          num_training_steps=steps)
    for _ in range(int(steps * at)):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(args.learning_rate)


def test_no_data_is_the_default_and_forgetting_it_is_a_one_line_error():
    from llava_compare.train.config import CONFIG_DIR
    from llava_compare.train.main import make_dataset

    assert not (CONFIG_DIR / "data" / "none.yaml").exists()  # no alias file for "no data"
    cfg = compose_config([])
    assert list(cfg.data.train) == [] and cfg.data.synth is None
    with pytest.raises(ValueError, match="data.train is empty: give at least one source") as err:
        make_dataset(cfg, processor=None)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", ["max_position_embeddings=4096", "hidden_size=64", "preset=tiny"])
def test_a_tiny_shape_key_beside_a_pretrained_llm_fails_naming_it(key):
    with pytest.raises(ConfigError, match=f"model.llm.{key.split('=')[0]} is set, but model.llm.name_or_path="
                                          "'lmsys/vicuna-7b-v1.5' is a pretrained llm") as err:
        compose_config(["recipe=stage2_lora", f"model.llm.{key}"])
    assert "\n" not in str(err.value) and "drop model.llm." in str(err.value)


def test_a_tiny_shape_key_beside_a_pretrained_vision_tower_fails_naming_it():
    with pytest.raises(ConfigError, match="model.vision.patch_size is set, but model.vision.name_or_path="):
        compose_config(["recipe=stage1_align", "model.vision.patch_size=16"])


def test_pretrained_components_keep_their_runtime_options():
    cfg = compose_config(["recipe=stage2_qlora", "model.vision.input_size=224", "model.llm.tokenizer=lmsys/vicuna-7b-v1.5"])
    assert cfg.model.llm.load_in_4bit and cfg.model.vision.input_size == 224
    assert cfg.model.llm.max_position_embeddings is None  # not set: the checkpoint's own


def test_a_tiny_component_gets_its_preset_and_overrides():
    cfg = compose_config(["model.llm.hidden_size=96"])
    assert cfg.model.llm.preset == "tiny" and cfg.model.llm.hidden_size == 96 and cfg.model.llm.num_layers == 4
    with pytest.raises(ConfigError, match="model.llm.tokenizer is set, but model.llm is a tiny random llm"):
        compose_config(["model.llm.tokenizer=gpt2"])
