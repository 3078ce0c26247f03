"""The Hugging Face Hub: load a model by repo id, publish an export (the [hub] extra).

    T2IPipeline.from_pretrained("user/repo")            # downloads once into the hub cache
    t2i export runs/demo exported --push-to-hub user/repo

Both go through huggingface_hub, so its settings apply: HF_HUB_OFFLINE=1 loads from the cache
(`~/.cache/huggingface/hub/models--user--repo/snapshots/<revision>/`, or HF_HUB_CACHE) without
any network access, HF_TOKEN or `hf auth login` authenticates a push. Only the files an
export holds are downloaded (JSON and safetensors; never pickles).
"""

from __future__ import annotations

from pathlib import Path

# What from_pretrained needs from a repo (plus the model card): an export's files.
MODEL_FILES = ["model_index.json", "tokenizer.json", "vocabulary.json", "*/config.json", "*/model.safetensors",
               "README.md"]
HUB_EXTRA = "pip install 't2i[hub]'"


def _huggingface_hub(what: str):
    try:
        import huggingface_hub
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{what} needs huggingface_hub: {HUB_EXTRA}", name="huggingface_hub") from None
    return huggingface_hub


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of Hub model `repo_id` at `revision` (default: main), fetched into the
    hub cache unless it is there already (with HF_HUB_OFFLINE=1: only from the cache)."""
    try:
        hub = _huggingface_hub(f"loading {repo_id!r} from the Hugging Face Hub")
    except ModuleNotFoundError as e:
        raise FileNotFoundError(f"model directory not found: {repo_id} (as a Hub repo id, {e})") from None
    try:
        return Path(hub.snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES))
    except Exception as e:  # huggingface_hub's own errors: not cached offline, no such repo, HTTP
        if not type(e).__module__.startswith("huggingface_hub"):
            raise
        at = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(f"model directory not found: {repo_id}, and the Hugging Face Hub has no model "
                                f"{repo_id!r}{at} for us ({type(e).__name__}: {e})") from None


def push_folder(folder: str | Path, repo_id: str, space: bool = False, private: bool = False) -> str:
    """Create (if needed) Hub repo `repo_id` (a gradio Space when `space`) and upload `folder` to
    it as one commit; returns the repo's URL. Needs network access and a write token."""
    hub = _huggingface_hub("--push-to-hub")
    api = hub.HfApi()
    repo_type = "space" if space else "model"
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                          space_sdk="gradio" if space else None)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                      commit_message="Upload t2i model export")
    return str(url)
