"""Run guards in a real (tiny, in-process) training run: a non-finite loss stops the run naming
the step and the batch's sample ids and keeps the last good checkpoint; a second run into the
same output_dir is refused unless it resumes (or overwrites)."""

import math
import re

import pytest
import torch
from safetensors.torch import load_file

from llava_compare.train.checkpoints import is_complete
from llava_compare.train.guards import NonFiniteLossError
from llava_compare.train.main import run
from llava_compare.train.run_dir import OutputDirError
from llava_compare.train.trainer import CompareTrainer
from tests.conftest import stage_cfg

COMMON = ["optim.lr=1e-2", "save_steps=2", "optim.scheduler=constant"]


def test_nan_loss_stops_naming_step_and_samples_and_keeps_the_last_checkpoint(synth_dir, tmp_path, monkeypatch):
    ids_at: dict[int, list[str]] = {}
    step, loss = CompareTrainer.training_step, CompareTrainer.compute_loss

    def record_ids(self, model, inputs, *args):
        ids_at[self.state.global_step + 1] = list(inputs["sample_ids"])
        return step(self, model, inputs, *args)

    def nan_in_step_3(self, model, inputs, *args, **kwargs):
        out = loss(self, model, inputs, *args, **kwargs)
        return out * math.nan if self.state.global_step + 1 == 3 else out

    monkeypatch.setattr(CompareTrainer, "training_step", record_ids)
    monkeypatch.setattr(CompareTrainer, "compute_loss", nan_in_step_3)
    with pytest.raises(NonFiniteLossError) as err:
        run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path, 4, *COMMON))
    message = str(err.value)
    assert re.search(r"non-finite loss \(nan\) at step 3\b", message)
    assert len(ids_at[3]) == 4 and all(i in message for i in ids_at[3])
    assert not any(i in message for i in ids_at[2])
    assert "checkpoint-2" in message and "resume=auto" in message

    # the poisoned state was never saved; the last good checkpoint is whole and resumes
    assert is_complete(tmp_path / "checkpoint-2") and not (tmp_path / "checkpoint-4").exists()
    assert not (tmp_path / "trainable.safetensors").exists()
    assert all(torch.isfinite(t).all() for t in load_file(str(tmp_path / "checkpoint-2" / "trainable.safetensors")).values())
    monkeypatch.undo()
    starts, train = [], CompareTrainer.train
    monkeypatch.setattr(CompareTrainer, "train", lambda self, resume_from_checkpoint=None, **kw: (
        starts.append(resume_from_checkpoint), train(self, resume_from_checkpoint, **kw))[1])
    resumed = run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path, 4, *COMMON, "resume=auto"))
    assert starts == [str(tmp_path / "checkpoint-2")] and resumed.metrics["samples_seen"] == 16


def test_second_run_into_a_finished_output_dir_is_refused(stage1_run, synth_dir):
    out = stage1_run[1].output_dir  # finished: the final output and its last checkpoint
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(OutputDirError, match="already holds a run") as err:
        run(stage_cfg("tiny_demo_stage1", synth_dir, out, 2, "resume=never"))
    assert str(out) in str(err.value) and "resume=auto" in str(err.value) and "overwrite=true" in str(err.value)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing was written


def test_overwrite_starts_fresh_and_drops_the_old_checkpoints(synth_dir, tmp_path):
    run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path, 4, *COMMON))
    assert is_complete(tmp_path / "checkpoint-4")
    fresh = run(stage_cfg("tiny_demo_stage1", synth_dir, tmp_path, 1, *COMMON, "overwrite=true"))
    assert fresh.metrics["samples_seen"] == 4  # 1 step from scratch, not a resume from step 4
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-1"]  # the old 2 and 4 are gone
    assert (tmp_path / "trainable.safetensors").is_file()


@pytest.mark.parametrize("packing", [False, True])
def test_batches_carry_sample_ids_in_layout_order(packing):
    from llava_compare.data.collator import CompareCollator

    items = [{"input_ids": torch.full((n,), n), "labels": torch.full((n,), n), "sample_id": sid}
             for n, sid in ((2, "a"), (5, "b"), (3, "c"))]
    batch = CompareCollator(0, packing=packing)([items[0], None, items[1], items[2]])
    # packing: one flattened row a + b + c; padded: one row each. Ids follow the tokens either way.
    assert batch["sample_ids"] == ["a", "b", "c"]
    starts = [0, 2, 7] if packing else [0, 0, 0]
    first_tokens = [int(batch["input_ids"][0 if packing else r, s]) for r, s in enumerate(starts)]
    assert first_tokens == [2, 5, 3]
    assert CompareCollator(0)([None])["sample_ids"] == []
