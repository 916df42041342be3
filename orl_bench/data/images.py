"""Image reading and the two errors every dataset loader raises."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


class DatasetLayoutError(FileNotFoundError):
    """A dataset is missing or malformed; the message names the path and the expected layout."""


class UnreadableImageError(Exception):
    """An image file is missing, corrupt or truncated; callers skip it and count it."""


def read_rgb(path: Path) -> Image.Image:
    """Read `path` as an RGB image, fully decoded so that a truncated file fails here, not later."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(f"cannot read image {path}: {e}") from e
