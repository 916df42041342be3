"""read_rgb: decoded RGB images, and a clear error for unreadable files."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from orl_bench.data.images import UnreadableImageError, read_rgb


def _jpeg(mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_reads_rgb(tmp_path):
    path = tmp_path / "gray.jpg"
    path.write_bytes(_jpeg("L"))
    image = read_rgb(path)
    assert image.mode == "RGB" and image.size == (64, 48)


@pytest.mark.parametrize("content", [None, b"this is not an image", "truncated"])
def test_unreadable_files_name_the_path(tmp_path, content):
    path = tmp_path / "broken.jpg"
    if content == "truncated":  # the header parses; the scan data ends early
        data = _jpeg()
        path.write_bytes(data[: len(data) // 2])
        Image.open(path).close()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        read_rgb(path)
