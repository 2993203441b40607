"""Provenance card of a result (BARS-style): everything needed to say where a number came from."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "recbole", "transformers", "peft", "mlflow", "optuna", "scipy",
            "pandas", "pillow")


def code_version(root: Path | None = None) -> dict:
    """Git commit and dirty flag of the harness checkout ('unknown' outside a git checkout)."""
    root = root or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=root, capture_output=True, text=True, timeout=5,
                                    check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(device: str = "cpu") -> dict:
    import os

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "device": device}
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def environment_card(device: str = "cpu") -> dict:
    """The part of the card shared by every run of one process (computed once)."""
    return {"code": code_version(), "packages": package_versions(), "hardware": hardware(device)}
