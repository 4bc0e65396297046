"""charlab: controlled character-training experiments on language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("charlab")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
