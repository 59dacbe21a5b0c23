"""The Hugging Face Hub from training: fail fast when it cannot be reached, upload a finished model folder."""

from __future__ import annotations

import socket
from pathlib import Path

import huggingface_hub

from .errors import MMClassifierError


def hub_unreachable_reason(host: str = "huggingface.co", timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now (offline mode, no connection), or None when it can."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return "the hub cannot be reached"
    return None


def check_pretrained_download() -> None:
    """Pretrained weights without a local file are downloaded: fail before loading data, not after."""
    reason = hub_unreachable_reason()
    if reason:
        raise MMClassifierError(
            f"--pretrained downloads the backbone's weights, but {reason}. Pass a local file with "
            "--backbone-weights PATH (safetensors), or train from scratch with --no-pretrained."
        )


def check_hub_access(repo_id: str | None) -> None:
    """Fail before training, not after it, when pushing to ``repo_id`` cannot work."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise MMClassifierError("--push-to-hub needs internet, but HF_HUB_OFFLINE is set.")
    if not repo_id:
        raise MMClassifierError("--push-to-hub needs --hub-model-id USER/NAME.")
    try:
        huggingface_hub.whoami()
    except Exception as err:
        raise MMClassifierError(f"--push-to-hub: cannot reach the hub or not logged in ({err}).") from err


def code_files() -> list[str]:
    """The code files a saved model folder carries, so transformers loads it without this package (the model's,
    the processor's and the pipeline's modules and what they import: what their ``save_pretrained`` copies)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from . import modeling, pipeline, processing

    roots = [Path(module.__file__) for module in (modeling, processing, pipeline)]
    return sorted({Path(path).name for root in roots for path in [root, *get_relative_import_files(root)]})


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload a saved model folder (weights, configs, tokenizer, model card and code files) to the hub repo
    ``repo_id`` (created if needed); returns the repo id."""
    missing = [name for name in code_files() if not (Path(folder) / name).is_file()]
    if missing:
        raise MMClassifierError(
            f"{folder} lacks {', '.join(missing)}: it was saved by an older mm_classifier. Re-save it first: "
            "mm_classifier.Predictor.from_pretrained(folder).save_pretrained(folder)."
        )
    repo = huggingface_hub.create_repo(repo_id, exist_ok=True).repo_id
    huggingface_hub.upload_folder(repo_id=repo, folder_path=str(folder))
    return repo
