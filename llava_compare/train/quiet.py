"""Start-up messages of dependencies, said once per run instead of once per rank; per-step
warnings of dependencies that are not ours to fix, silenced by their exact text.

Under ``torchrun --nproc_per_node=8`` every rank imports bitsandbytes (through peft) and DeepSpeed
(through accelerate), and each prints the same start-up warning: bitsandbytes' "kernels" notice
on CPUs without the ``kernels`` package, DeepSpeed's "Setting accelerator to CPU". Rank 0 keeps
its one line; the other ranks drop exactly these messages (a logging filter, so nothing else is
hidden). Imports nothing heavy: it must run before those libraries are imported.
"""

from __future__ import annotations

import logging
import warnings

from ..ranks import rank

# logger name -> start of the one message dropped on ranks > 0
STARTUP_MESSAGES = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "DeepSpeed": "Setting accelerator to",
}


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_startup_on_other_ranks() -> None:
    """On ranks > 0, drop the dependencies' repeated start-up messages."""
    if rank() == 0:
        return
    for name, prefix in STARTUP_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))


def ignore_dependency_step_warnings() -> None:
    """DeepSpeed 0.19's ZeRO-1/2 calls ``torch.distributed.all_gather_into_tensor``, deprecated in
    torch 2.13, on every step: a FutureWarning per step and rank that is not ours to fix."""
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)
