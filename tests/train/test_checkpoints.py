"""Checkpoint folders: completion records, atomic commit, pruning, and which folder resume=auto
and the output-directory rule pick (no training: folders are made by hand)."""

import json

import pytest

from llava_compare.train.checkpoints import (COMPLETE, STAGING, WRITING, begin, clear_torn, commit, is_complete,
                                             is_torn, newest_complete, prune, staging_root, write_marker)
from llava_compare.train.run_dir import OutputDirError, choose_start, existing_run


def fake_checkpoint(out, step, complete=True, staged=False):
    path = (staging_root(out) if staged else out) / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    (path / "optimizer.pt").write_bytes(b"x")
    if complete:
        write_marker(path, {"step": step})
    return path


def test_marker_lists_files_and_a_missing_one_makes_it_incomplete(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 2)
    assert json.loads((ckpt / COMPLETE).read_text())["files"] == ["optimizer.pt", "trainer_state.json"]
    assert is_complete(ckpt)
    (ckpt / "optimizer.pt").unlink()
    assert not is_complete(ckpt)


def test_newest_complete_skips_unmarked_and_staged_folders(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 6, complete=False)  # torn: written in place by something else
    fake_checkpoint(tmp_path, 8, staged=True)  # killed before its rename
    (tmp_path / "checkpoint-10.tmp-123").mkdir()
    assert newest_complete(tmp_path).name == "checkpoint-4"
    assert choose_start(str(tmp_path), "auto", False, True) == str(tmp_path / "checkpoint-4")


def test_commit_renames_into_place_and_replaces_a_same_step_folder(tmp_path):
    old = fake_checkpoint(tmp_path, 4)
    (old / "stale.bin").write_bytes(b"old")
    staged = fake_checkpoint(tmp_path, 4, staged=True)
    target = commit(staged, tmp_path)
    assert target == tmp_path / "checkpoint-4" and is_complete(target)
    assert not staged.exists() and not (target / "stale.bin").exists()


def test_a_save_is_torn_from_begin_until_its_marker(tmp_path):
    """The protocol of checkpoint_callback: begin (in-progress mark) -> the Trainer's files ->
    write_marker (complete, mark removed); a save killed in between is torn, never resumed from,
    not an existing run, and deleted at the next start."""
    old = fake_checkpoint(tmp_path, 4)  # a complete step-4 folder of an earlier attempt
    (old / "stale.bin").write_bytes(b"old")
    folder = begin(tmp_path, 4)
    assert folder == old and not (folder / "stale.bin").exists() and is_torn(folder)
    (folder / "trainable.safetensors").write_bytes(b"w")  # killed here
    fake_checkpoint(tmp_path, 2)
    assert newest_complete(tmp_path).name == "checkpoint-2" and existing_run(tmp_path) == "checkpoint-2"
    assert choose_start(str(tmp_path), "auto", False, is_main=True).endswith("checkpoint-2")
    assert not folder.exists() and not (tmp_path / STAGING).exists()  # the main process removed it

    folder = begin(tmp_path, 4)
    (folder / "trainable.safetensors").write_bytes(b"w")
    write_marker(folder, {"step": 4})
    assert is_complete(folder) and not is_torn(folder) and not (folder / WRITING).exists()
    assert json.loads((folder / COMPLETE).read_text())["files"] == ["trainable.safetensors"]
    assert clear_torn(tmp_path) == [] and newest_complete(tmp_path) == folder


def test_only_our_torn_saves_are_deleted(tmp_path):
    unmarked = fake_checkpoint(tmp_path, 3, complete=False)  # another tool's or an older version's
    begin(tmp_path, 6)
    assert [p.name for p in clear_torn(tmp_path)] == ["checkpoint-6"]
    assert unmarked.exists() and existing_run(tmp_path) == "checkpoint-3"


def test_prune_keeps_the_newest_complete_ones_and_leaves_unmarked_folders(tmp_path):
    for step in (2, 4, 6, 8):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 1, complete=False)
    pruned = prune(tmp_path, keep=2)
    assert [p.name for p in pruned] == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-6", "checkpoint-8"]
    assert prune(tmp_path, keep=0) == []  # <= 0 keeps all


def test_start_files_alone_are_not_an_existing_run(tmp_path):
    for name in ("config.json", "llava_compare.json", "model.safetensors"):
        (tmp_path / name).write_text("{}")
    fake_checkpoint(tmp_path, 2, staged=True)  # a first save that was killed
    assert existing_run(tmp_path) is None
    assert choose_start(str(tmp_path), "never", False, True) is None
    assert choose_start(str(tmp_path), "auto", False, True) is None
    assert choose_start(str(tmp_path / "absent"), "never", False, True) is None


@pytest.mark.parametrize("resume", ["never", "auto"])
def test_an_existing_run_is_refused_unless_resuming(tmp_path, resume):
    (tmp_path / "trainable.safetensors").write_bytes(b"x")  # a finished stage, no checkpoint
    fake_checkpoint(tmp_path, 3, complete=False)
    with pytest.raises(OutputDirError, match="already holds a run .*checkpoint-3.*resume=auto.*overwrite=true"):
        choose_start(str(tmp_path), resume, False, True)
    assert (tmp_path / "trainable.safetensors").exists()  # refused before touching anything


def test_resume_never_refuses_a_run_with_checkpoints_that_auto_would_resume(tmp_path):
    fake_checkpoint(tmp_path, 2)
    with pytest.raises(OutputDirError, match="resume=auto to continue"):
        choose_start(str(tmp_path), "never", False, True)
    assert choose_start(str(tmp_path), "auto", False, True).endswith("checkpoint-2")


def test_overwrite_deletes_the_previous_run_on_the_main_process_only(tmp_path):
    (tmp_path / "trainable.safetensors").write_bytes(b"x")
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, staged=True)
    assert choose_start(str(tmp_path), "auto", True, is_main=False) is None
    assert (tmp_path / "checkpoint-2").exists()  # other ranks leave it to rank 0
    assert choose_start(str(tmp_path), "auto", True, is_main=True) is None
    assert existing_run(tmp_path) is None and not (tmp_path / STAGING).exists()
    with pytest.raises(OutputDirError, match="drop one"):
        choose_start(str(tmp_path), str(tmp_path / "checkpoint-2"), True, True)


def test_explicit_resume_path_must_be_a_checkpoint(tmp_path):
    with pytest.raises(OutputDirError, match="not a checkpoint folder"):
        choose_start(str(tmp_path), str(tmp_path / "checkpoint-9"), False, True)
    ckpt = fake_checkpoint(tmp_path, 2, complete=False)  # e.g. written by an older version
    assert choose_start(str(tmp_path), str(ckpt), False, True) == str(ckpt)
