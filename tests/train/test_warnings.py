"""A training run is quiet: no FutureWarning per step (transformers 5.24 deprecated the
``past_key_values`` argument the model used to pass on every forward: `make demo` printed it 621
times), and none at start-up from our own calls (TrainingArguments' gradient_checkpointing, peft)."""

from __future__ import annotations

import logging
import warnings
from collections import Counter

from llava_compare.train.main import run
from tests.conftest import LORA, stage_cfg

STEPS = 3


def test_short_training_run_emits_no_future_warning(synth_dir, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every emission, not once per call site
        run(stage_cfg("tiny_demo_stage2", synth_dir, tmp_path, STEPS, "init_from=null", *LORA,
                      "optim.gradient_checkpointing=true"))
    future = Counter(f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                     if issubclass(w.category, (FutureWarning, DeprecationWarning)))
    per_step = {m: n for m, n in future.items() if n >= STEPS}
    assert not per_step, per_step
    assert not future, future  # start-up too: each one was a call of ours to a deprecated name
    assert "deprecated" not in caplog.text, caplog.text
