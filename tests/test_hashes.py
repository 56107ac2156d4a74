"""The hash cache: A1111's hashes of big files, computed once per file version."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from daemon.a1111.infotext import lora_hash, sha256_file
from daemon.models.hashes import HashCache


def test_hashes_are_remembered_across_runs_until_the_file_changes(tmp_path: Path) -> None:
    store = tmp_path / "state" / "hashes.json"
    model = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(8.0)}, str(model))
    first = HashCache(store)
    assert first.sha256(model) == sha256_file(model)
    assert store.is_file()

    # A new run reads the stored hash: proven by a stamp-preserving change of content.
    stat = model.stat()
    save_file({"w": torch.arange(8.0) + 1}, str(model))  # same size
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert HashCache(store).sha256(model) == first.sha256(model) != sha256_file(model)

    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: recomputed
    assert HashCache(store).sha256(model) == sha256_file(model)


def test_lora_and_plain_hashes_are_kept_apart(tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 2)}, str(lora))
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.lora(lora) == lora_hash(lora)  # kohya's hash of the tensor data
    assert cache.sha256(lora) == sha256_file(lora)
    assert cache.lora(lora) != cache.sha256(lora)[:12]


def test_a_damaged_or_unwritable_store_only_costs_recomputing(tmp_path: Path) -> None:
    file = tmp_path / "vae.safetensors"
    save_file({"w": torch.zeros(3)}, str(file))
    store = tmp_path / "hashes.json"
    store.write_text("{not json")
    assert HashCache(store).sha256(file) == sha256_file(file)
    store.write_text('["a list"]')
    assert HashCache(store).sha256(file) == sha256_file(file)
    blocked = tmp_path / "a-file" / "hashes.json"  # its folder cannot be made
    (tmp_path / "a-file").write_text("")
    assert HashCache(blocked).sha256(file) == sha256_file(file)
    assert HashCache().sha256(file) == sha256_file(file)  # memory only
