"""An unlabeled folder of images (`data.source=folder`): every image file under a root, any depth.

Images (JPEG, PNG and the other suffixes class folders accept) are listed in the sorted order of
their paths relative to the root, written with '/', so the list is the same on every machine.
The key digests each file's relative path, size and modification time: adding, removing,
replacing or editing a file gives a new key, so nothing cached under it (artifacts, stage-2
correspondences, proposals) is reused for other images. One stat per file keeps this cheap on
a COCO-sized folder, where hashing the contents would read every byte (19 GB); the price is
that a copy with fresh modification times gets a new key and its caches are rebuilt.

Files are opened only until one reads, to reject a folder that holds nothing trainable; during
training, unreadable images are skipped and counted, as in every source.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from orl_bench.data.class_folders import IMAGE_SUFFIXES
from orl_bench.data.images import DatasetLayoutError, UnreadableImageError, read_rgb


def check_root(root: Path) -> None:
    """DatasetLayoutError unless `root` is a folder (its images are listed only when it is read)."""
    if not Path(root).is_dir():
        raise DatasetLayoutError(f"data.source=folder: {root} does not exist or is not a folder; "
                                 f"expected a folder of images ({', '.join(IMAGE_SUFFIXES)}), at any depth")


class UnlabeledFolder:
    """`paths` (sorted by relative path) and `key` ("folder-<digest>") of the images under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        check_root(self.root)
        found = sorted((p.relative_to(self.root).as_posix(), p) for p in self.root.rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DatasetLayoutError(f"data.source=folder: no images ({', '.join(IMAGE_SUFFIXES)}) under "
                                     f"{self.root}, at any depth")
        self.paths = [p for _, p in found]
        stats = ((name, p.stat()) for name, p in found)
        stamp = json.dumps([[name, st.st_size, st.st_mtime_ns] for name, st in stats])
        self.key = f"folder-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"
        self._require_a_readable_image()

    def _require_a_readable_image(self) -> None:
        for path in self.paths:
            try:
                read_rgb(path)
                return
            except UnreadableImageError as e:
                error = e
        raise DatasetLayoutError(f"data.source=folder: none of the {len(self.paths)} images under {self.root} "
                                 f"can be read (e.g. {error})")

    def __len__(self) -> int:
        return len(self.paths)
