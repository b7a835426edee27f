"""SAM adapters from the Hugging Face Hub, offline: a Hub cache that the test fills in huggingface_hub's own layout
(checked with its `scan_cache_dir`), read through `hf_hub_download` as a Space would, never the network."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, scan_cache_dir
from huggingface_hub.file_download import repo_folder_name

from sam_core.cli import main
from sam_core.loading import ADAPTER_FILENAME, SamLoadError, load_sam, resolve_adapter, save_adapter

MAIN, OLDER = "a" * 40, "b" * 40  # commit hashes


def cache_file(cache: Path, repo: str, filename: str, source: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> None:
    """Put `source` into a Hub cache as `repo`'s `filename` at `commit`, the way hf_hub_download stores it: the
    content once under blobs/ (named by its SHA-256), the snapshot entry a relative link to it, refs/<branch>
    holding the commit."""
    storage = cache / repo_folder_name(repo_id=repo, repo_type="model")
    data = source.read_bytes()
    blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    pointer = storage / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    for ref in refs:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, make_model):
    """A cache holding user/sam-adapter: the default file name at main, a second adapter under another name at
    an older commit (tag v1)."""
    cache = tmp_path / "hub"
    current, older = make_model(seed=1, active=True), make_model(seed=2, active=True)
    save_adapter(current, tmp_path / "current.safetensors")
    save_adapter(older, tmp_path / "older.safetensors")
    cache_file(cache, "user/sam-adapter", ADAPTER_FILENAME, tmp_path / "current.safetensors", MAIN)
    cache_file(cache, "user/sam-adapter", "sam_v1.safetensors", tmp_path / "older.safetensors", OLDER, refs=("v1",))
    repos = {repo.repo_id: repo for repo in scan_cache_dir(cache).repos}  # huggingface_hub reads it as its own
    assert {f.file_name for r in repos["user/sam-adapter"].revisions for f in r.files} == {ADAPTER_FILENAME, "sam_v1.safetensors"}
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE  # conftest: no request leaves this machine
    return {"cache": cache, "current": current, "older": older}


def test_hub_references_resolve_from_the_cache_offline(hub_cache, tmp_path):
    path, label = resolve_adapter("user/sam-adapter")
    assert label == f"user/sam-adapter:{ADAPTER_FILENAME}" and Path(path).read_bytes() == (tmp_path / "current.safetensors").read_bytes()
    path, label = resolve_adapter("user/sam-adapter@v1:sam_v1.safetensors")
    assert label == "user/sam-adapter@v1:sam_v1.safetensors" and Path(path).read_bytes() == (tmp_path / "older.safetensors").read_bytes()
    path, _ = resolve_adapter(f"user/sam-adapter@{OLDER}:sam_v1.safetensors")  # a commit hash as the revision
    assert Path(path).read_bytes() == (tmp_path / "older.safetensors").read_bytes()


def test_a_hub_adapter_is_loaded_and_reported_like_a_file(hub_cache, tiny_checkpoint):
    loaded = load_sam(str(tiny_checkpoint), adapter="user/sam-adapter@v1:sam_v1.safetensors")
    assert torch.equal(loaded.model.guidance.context_to_image.weight, hub_cache["older"].guidance.context_to_image.weight)
    assert loaded.info.adapter == "user/sam-adapter@v1:sam_v1.safetensors" and not loaded.info.guidance_identity
    assert sum(loaded.info.adapter_tensors.values()) == 6


def test_missing_hub_adapters_say_what_is_missing_and_how_to_get_it(hub_cache, tmp_path):
    with pytest.raises(SamLoadError) as missing_repo:
        resolve_adapter("someone/elsewhere")
    assert str(missing_repo.value) == (
        f"adapter someone/elsewhere:{ADAPTER_FILENAME}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
        f"run `hf download someone/elsewhere {ADAPTER_FILENAME}` on a machine with internet (it fills the cache) or "
        "pass the adapter as a local file"
    )
    with pytest.raises(SamLoadError, match=r"`hf download user/sam-adapter other.safetensors --revision v1`"):
        resolve_adapter("user/sam-adapter@v1:other.safetensors")
    with pytest.raises(SamLoadError, match="adapter missing.safetensors: no such file"):
        resolve_adapter(tmp_path / "missing.safetensors")
    with pytest.raises(SamLoadError, match="adapter sam.safetensors: no such file"):
        resolve_adapter("adapters/sam.safetensors")  # a relative path, not a repository named sam.safetensors


def test_the_cli_takes_a_hub_adapter(hub_cache, tiny_checkpoint, capsys):
    assert main(["info", "--model", str(tiny_checkpoint), "--adapter", "user/sam-adapter"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["adapter"] == f"user/sam-adapter:{ADAPTER_FILENAME}" and info["guidance_identity"] is False
    assert main(["info", "--model", str(tiny_checkpoint), "--adapter", "user/sam-adapter:nothing.safetensors"]) == 2
    assert capsys.readouterr().err.startswith("error: adapter user/sam-adapter:nothing.safetensors: not in the local")
