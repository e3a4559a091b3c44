"""Upload an export folder to the Hugging Face Hub.

The token is never an argument here, on the command line or in a config file: ``HfApi`` finds it
itself (``HF_TOKEN`` in the environment, else the file ``hf auth login`` wrote). This module never
reads, prints, logs or writes it; it only asks whether one exists, to fail early with a clear message.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class HubAuthError(RuntimeError):
    """No Hugging Face token is available to upload with."""


def require_token() -> None:
    """Fail early, before a long export, when huggingface_hub has no token to upload with."""
    from huggingface_hub import get_token

    if get_token() is None:  # only a presence check: the value is never held on to
        raise HubAuthError("no Hugging Face token found: set HF_TOKEN in the environment or run "
                           "`hf auth login` (tokens are never taken from the command line)")


def push_folder(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                commit_message: str | None = None) -> str:
    """Create ``repo_id`` (a model repo; kept if it exists), optionally the branch ``revision``,
    and upload ``folder`` to it in one commit. Returns the repo URL."""
    from huggingface_hub import HfApi

    require_token()
    api = HfApi()  # no token argument: huggingface_hub resolves it for every request
    url = api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                      commit_message=commit_message or "Upload llava_compare export")
    log.info("uploaded %s to %s%s", folder, repo_id, f" (revision {revision})" if revision else "")
    return str(url)


__all__ = ["HubAuthError", "push_folder", "require_token"]
