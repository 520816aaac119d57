"""Hugging Face Hub conventions: a model card in every saved classifier, loading by Hub repo id,
``push_to_hub`` through ``huggingface_hub`` (Hub datasets: ``data.load_hub_dataset``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .card import model_card
from .errors import ArtefactError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_UPLOADED = ("README.md", "tailtune.json", "model.safetensors", "module.safetensors", "backbone/*",
             "analysis/*.json", "analysis/*.csv", "analysis/*.png", "test_report.json")
def resolve_classifier(ref: str | Path) -> Path:
    """A saved classifier's directory: a local path, or a Hub repo id (``owner/name``) downloaded once."""
    path = Path(ref)
    if path.exists() or not _REPO_ID.match(str(ref)):
        return path
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(str(ref), allow_patterns=list(_UPLOADED)))
    except Exception as e:  # offline, unknown repo, no access
        raise ArtefactError(f"{ref}: no such local directory, and the Hub repo could not be fetched "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the path, "
                            f"the repo id, your network or HF_TOKEN") from None


def upload_plan(directory: str | Path, repo_id: str) -> dict:
    """What ``push_to_hub`` would upload: the safetensors + JSON artefact, its backbone files and card."""
    from .artefacts import read_classifier
    directory = Path(directory)
    read_classifier(directory)  # a complete classifier, or a clear error
    if not _REPO_ID.match(repo_id):
        raise ArtefactError(f"{repo_id!r} is not a Hub repo id; write owner/name")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and any(
        p.relative_to(directory).match(pattern) for pattern in _UPLOADED))
    return {"repo_id": repo_id, "files": [str(p.relative_to(directory)) for p in files],
            "bytes": sum(p.stat().st_size for p in files)}


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                dry_run: bool = False) -> dict:
    """Upload a saved classifier to a Hub model repo (created if missing); ``dry_run`` only plans."""
    plan = upload_plan(directory, repo_id)
    if "README.md" not in plan["files"]:
        from .artefacts import atomic_write_text, read_classifier
        atomic_write_text(Path(directory) / "README.md", model_card(read_classifier(directory)))
        plan = upload_plan(directory, repo_id)
    if dry_run:
        return plan
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(directory), allow_patterns=list(_UPLOADED),
                               commit_message="Upload a tailtune classifier")
    return {**plan, "url": str(getattr(commit, "commit_url", commit))}
