"""Where charlab keeps converted models and caches: ``$CHARLAB_HOME`` (default ~/.cache/charlab)."""

from __future__ import annotations

import os
from pathlib import Path


def charlab_home() -> Path:
    return Path(os.environ.get("CHARLAB_HOME") or Path.home() / ".cache" / "charlab").expanduser()


def models_dir() -> Path:
    return charlab_home() / "models"


def default_cache_path() -> Path:
    return charlab_home() / "cache.sqlite"
