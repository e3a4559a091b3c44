"""Where this process sits in a ``torchrun`` job: its rank, the world size, its local rank.

The process group answers once it exists (the Trainer's ``TrainingArguments`` create it), so
code before, inside and after the Trainer agrees with the Trainer about who is rank 0. Before it
exists, torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) answer;
outside torchrun this process is rank 0 of 1.

A collective needs more than a world size above one: it needs the group itself, so code that
talks to the other ranks asks :func:`collectives` rather than ``world_size() > 1``.

The bottom layer of the package: every layer (data, eval, train) imports it and it imports no
other part of the package.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def group_ready() -> bool:
    """True when torch.distributed's default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank: the process group's, else torchrun's ``RANK``, else 0."""
    return dist.get_rank() if group_ready() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of ranks: the process group's, else torchrun's ``WORLD_SIZE``, else 1."""
    return dist.get_world_size() if group_ready() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's rank on its node (its GPU index): torchrun's ``LOCAL_RANK``, else 0.

    The process group has no notion of a node, so the environment is the only source."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def collectives() -> bool:
    """True when a collective reaches other ranks: a process group of more than one rank is up."""
    return group_ready() and dist.get_world_size() > 1
