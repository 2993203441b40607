"""Dataset names -> prepared dataset folders (built on first use, then cached).

Built in: ``synthetic`` (the controlled-modality default, generated from its knobs) and
``ml-100k`` (the copy shipped inside the recbole wheel, optionally joined with a poster folder).
Anything imported with ``bench data import`` lives in the data folder under its own name; a path
to a dataset folder works too.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError
from ..io import build_dir_once, stable_hash

BUILTIN = {
    "synthetic": "controlled-modality synthetic dataset (embedded default; knobs via options)",
    "ml-100k": "MovieLens-100K from the recbole wheel; --images adds a poster folder",
}


def default_data_dir() -> Path:
    return Path(os.environ.get("BENCH_DATA_DIR", "data"))


def _build_dataset(target: Path, build) -> Path:
    return build_dir_once(target, build, marker="manifest.json")


def resolve_dataset(name: str, data_dir: Path | None = None, images: Path | None = None,
                    options: dict | None = None) -> Path:
    """The folder of a prepared dataset, building it first if needed."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    options = dict(options or {})
    if images is not None and not Path(images).is_dir():
        raise ConfigError(f"image folder not found: {images}")
    if name == "synthetic":
        from .synthetic import SyntheticConfig, generate_synthetic

        try:
            config = SyntheticConfig(**options)
        except TypeError as e:
            raise ConfigError(f"synthetic dataset: {e}") from None
        return _build_dataset(data_dir / f"synthetic-{config.key()}",
                           lambda tmp: generate_synthetic(tmp, config))
    if options:
        raise ConfigError(f"dataset {name!r} takes no options (got {', '.join(options)})")
    if name == "ml-100k":
        from .importers import import_ml100k

        suffix = f"-images-{stable_hash(str(Path(images).resolve()), 8)}" if images else ""
        return _build_dataset(data_dir / f"ml-100k{suffix}",
                           lambda tmp: import_ml100k(tmp, images=images))
    if images is not None:
        raise ConfigError("--images applies to built-in datasets; import other datasets with "
                          "'bench data import' and their image folder")
    for candidate in (data_dir / name, Path(name)):
        if candidate.is_dir() and any(candidate.glob("*.inter")):
            return candidate
    known = sorted(BUILTIN) + [p.name for p in sorted(data_dir.glob("*")) if p.is_dir()
                               and (p / "manifest.json").exists() and not p.name.startswith(".")]
    raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(known)}")


def list_datasets(data_dir: Path | None = None) -> list[tuple[str, str]]:
    """(name, description) of the built-in datasets and of every dataset in the data folder."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    out = list(BUILTIN.items())
    if data_dir.is_dir():
        import json

        for p in sorted(data_dir.iterdir()):
            m = p / "manifest.json"
            if p.is_dir() and m.exists() and not p.name.startswith("."):
                c = json.loads(m.read_text()).get("counts", {})
                desc = (f"{c.get('users')} users, {c.get('items')} items, "
                        f"{c.get('interactions')} interactions ({p})")
                out.append((p.name, desc))
    return out
