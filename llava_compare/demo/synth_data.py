"""``data.synth``: the synthetic dataset, generated before the model is built."""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import OmegaConf

from ..ranks import rank

log = logging.getLogger(__name__)


def ensure_synth_data(cfg: Any) -> None:
    """Generate the synthetic dataset (rank 0) when its folder holds none made with these settings (a
    changed recipe must not train on the previous recipe's files); other ranks wait until it does."""
    synth = cfg.data.synth
    if synth is None:
        return
    from ..synth import difficulty, generate, settings_mismatch

    weights = OmegaConf.to_container(synth.train_weights) if synth.train_weights else None
    args = (synth.dir, synth.n_train, synth.n_eval)
    kwargs = {"seed": synth.seed, "image_size": synth.image_size, "n_captions": synth.n_captions,
              "train_weights": weights, "tasks": list(synth.tasks) if synth.tasks else None,
              "curriculum": OmegaConf.to_container(synth.curriculum) if synth.curriculum else None,
              "directions": list(synth.directions) if synth.directions is not None else None,
              "mirror": synth.mirror, "config": difficulty(synth.style)}
    why = settings_mismatch(*args, **kwargs) if rank() == 0 else None
    if why:
        log.info("generating synthetic data into %s (%s)", synth.dir, why)
        generate(*args, **kwargs)
    deadline = time.time() + 1800
    while settings_mismatch(*args, **kwargs):  # meta.json is written last: the data is complete
        if time.time() > deadline:
            raise TimeoutError(f"rank {rank()} waited 30 min for synthetic data at {synth.dir}")
        time.sleep(1)
