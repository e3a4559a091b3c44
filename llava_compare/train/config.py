"""Compose the training config: Hydra groups under ``configs/``, a recipe from ``recipes/``,
command-line ``key=value`` overrides, then validation against the typed schema.

We use Hydra's compose API rather than ``@hydra.main``: under torchrun every rank runs this, and
compose neither changes the working directory nor makes per-rank timestamped run folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from ..model.presets import resolve_component
from .schema import LORA_DEFAULTS, TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
RECIPE_DIR = REPO_ROOT / "recipes"


# The schema is the first entry of configs/train.yaml's defaults, so Hydra itself knows every key:
# `optim.lr=...` works without `+`, and a misspelled key fails at composition.
ConfigStore.instance().store(name="train_schema", node=TrainConfig)


class ConfigError(ValueError):
    """A config that cannot run; the message says which key and what is valid."""


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def config_groups() -> dict[str, list[str]]:
    """Each config group under ``configs/`` (``model``, ``model/compressor``, ``stage``, ...) and
    its options, as ``GROUP=OPTION`` overrides name them; ``recipe`` first."""
    groups: dict[str, list[str]] = {"recipe": available_recipes()}
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONFIG_DIR).as_posix()
        if group != "." and group != "recipe":
            groups.setdefault(group, []).append(path.stem)
    return {"recipe": groups.pop("recipe"), **dict(sorted(groups.items()))}


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``["recipe=tiny_demo_stage1", "optim.lr=1e-3"]`` -> validated, resolved config."""
    overrides = list(overrides)
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), None)
    if recipe is not None and recipe not in available_recipes():
        raise ConfigError(f"unknown recipe {recipe!r}; available: {', '.join(available_recipes())}")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            # with Hydra's own section, for the group choices (stage=align) errors can name
            raw = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except Exception as err:  # Hydra's own message names the key; add what is valid
        if type(err).__name__ not in ("ConfigCompositionException", "ConfigKeyError", "ValidationError",
                                      "MissingConfigException", "OverrideParseException"):
            raise
        cause = f": {str(err.__cause__).splitlines()[0]}" if err.__cause__ is not None else ""
        raise ConfigError(f"{err}{cause}{_valid_keys_hint(str(err))}") from err
    choices = dict(raw.hydra.runtime.choices)
    cfg = validate(OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"]), recipe, choices)
    cfg.overrides = overrides  # what the command line set (init_from tells it from recipe defaults)
    return cfg


def _valid_keys_hint(message: str) -> str:
    """For "Key 'lrr' not in 'OptimConfig'"-style errors, list the section's valid keys."""
    schema = OmegaConf.structured(TrainConfig)
    for token in message.replace("'", " ").split():
        if "." in token and OmegaConf.select(schema, token.rsplit(".", 1)[0]) is not None:
            section = OmegaConf.select(schema, token.rsplit(".", 1)[0])
            if isinstance(section, DictConfig):
                return f"\nvalid keys under {token.rsplit('.', 1)[0]}: {', '.join(section.keys())}"
    return f"\nvalid top-level keys: {', '.join(schema.keys())}"


def validate(raw: DictConfig, recipe: str | None = None, choices: dict[str, str] | None = None) -> DictConfig:
    """Merge into the typed schema: unknown keys and wrong types fail here, listing valid keys;
    then the checks between keys (:func:`check`). ``choices``: Hydra's group choices, for messages."""
    schema = OmegaConf.structured(TrainConfig)
    raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "recipe"]) if "recipe" in raw else raw
    try:
        cfg = OmegaConf.merge(schema, raw)
    except (ConfigKeyError, ValidationError) as err:
        key = getattr(err, "full_key", None) or ""
        parent = OmegaConf.select(schema, key.rsplit(".", 1)[0]) if "." in key else schema
        valid = ", ".join(sorted(parent.keys())) if isinstance(parent, DictConfig) else "?"
        raise ConfigError(f"invalid config key or value {key!r}: {err.msg}. Valid keys here: {valid}") from err
    check(cfg, choices or {})
    OmegaConf.set_struct(cfg, True)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)  # resolve interpolations once, early
    out = OmegaConf.create(cfg_dict)
    out.recipe_name = recipe
    return out


def check(cfg: DictConfig, choices: dict[str, str]) -> None:
    """Checks between keys, in place: each model component against its kind (a tiny one gets its
    preset's shape filled in), LoRA settings against the stage, the warmup ratio's range."""
    for part in ("vision", "llm"):
        try:
            resolved = resolve_component(part, OmegaConf.to_container(cfg.model[part]))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        for key, value in resolved.items():
            cfg.model[part][key] = value
    if cfg.stage.train_llm == "lora":
        for key, value in LORA_DEFAULTS.items():
            if cfg.peft[key] is None:
                cfg.peft[key] = value
    else:
        chosen = [f"peft={choices['peft']}"] if choices.get("peft") else []
        chosen += [f"peft.{k}" for k, v in cfg.peft.items() if v is not None]
        if chosen:
            stage = choices.get("stage") or cfg.stage.name
            raise ConfigError(
                f"{', '.join(chosen)} sets LoRA, but stage={stage} trains no LoRA (stage.train_llm="
                f"{cfg.stage.train_llm}): choose a stage with stage.train_llm=lora (stage=instruct_lora), "
                f"or drop {chosen[0]}")
    if not 0 <= cfg.optim.warmup_ratio < 1:
        # TrainingArguments reads warmup_steps >= 1 as a step count: 1.0 would warm up for one step
        raise ConfigError(f"optim.warmup_ratio must be in [0, 1) (a share of the steps); got {cfg.optim.warmup_ratio}")
