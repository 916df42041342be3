"""The correspondence artifact: own format round trip, official JSON round trip, validation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orl_bench.methods.orl.correspondence import (FORMAT_VERSION, CorrespondenceError,
                                                  Correspondences, export_official,
                                                  import_official, to_official)

N, K = 7, 3
SIZES = [(200 + 10 * i, 150 + 5 * i) for i in range(N)]
INFO = {"bbox_min_size": 96, "bbox_max_aspect_ratio": 3, "bbox_max_iou": 0.5, "intra_bbox_num": 100,
        "knn_image_num": K, "knn_bbox_pair_ratio": 0.1, "source": "selective_search"}


def make(seed: int = 0) -> Correspondences:
    rng = np.random.default_rng(seed)
    boxes = []
    for i, (w, h) in enumerate(SIZES):
        n = int(rng.integers(1, 9))
        xy = rng.integers(0, 60, (n, 2))
        wh = rng.integers(20, 90, (n, 2))
        b = np.concatenate([xy, wh], axis=1).astype(np.float32)
        if i == 2:
            b += np.float32(0.1)  # float ground-truth-like boxes must survive JSON too
        boxes.append(b)
    knn = np.array([rng.choice([j for j in range(N) if j != i], K, replace=False) for i in range(N)])
    pairs = [[np.stack([rng.integers(0, len(boxes[i]), m), rng.integers(0, len(boxes[j]), m)], axis=1)
              for j, m in zip(knn[i], rng.integers(1, 5, K))] for i in range(N)]
    return Correspondences([100 + 3 * i for i in range(N)], [f"{i:012d}.jpg" for i in range(N)],
                           boxes, knn.astype(np.int64), pairs, dict(INFO))


def assert_same(a: Correspondences, b: Correspondences) -> None:
    assert a.image_ids == b.image_ids and a.file_names == b.file_names and a.info == b.info
    assert len(a.boxes) == len(b.boxes)
    for x, y in zip(a.boxes, b.boxes):
        assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y)
    assert a.knn.dtype == b.knn.dtype == np.int64 and np.array_equal(a.knn, b.knn)
    for row_a, row_b in zip(a.pairs, b.pairs, strict=True):
        for x, y in zip(row_a, row_b, strict=True):
            assert np.asarray(y).dtype == np.int64 and np.array_equal(x, y)


def test_save_load_round_trip(tmp_path):
    c = make()
    c.save(tmp_path / "corr.npz")
    back = Correspondences.load(tmp_path / "corr.npz", n_images=N, image_sizes=SIZES)
    assert_same(c, back)
    assert len(back) == N


def test_official_json_round_trip_is_exact(tmp_path):
    c = make(1)
    export_official(c, tmp_path / "orl.json")
    back = import_official(tmp_path / "orl.json", n_images=N, image_sizes=SIZES)
    assert_same(c, back)
    export_official(back, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "orl.json").read_text()


def test_official_layout(tmp_path):
    c = make(2)
    data = to_official(c)
    assert set(data) == {"info", "images", "pseudo_annotations"}
    assert data["images"] == {"file_name": c.file_names, "id": c.image_ids}
    pa = data["pseudo_annotations"]
    assert pa["image_id"] == c.image_ids and pa["knn_image_id"] == c.knn.tolist()
    assert pa["bbox"][0] == c.boxes[0].astype(int).tolist()  # integral boxes are written as ints
    i, k = 4, 1
    j = c.knn[i, k]
    for entry, (a, b) in zip(pa["knn_bbox_pair"][i][k], c.pairs[i][k]):
        assert entry == c.boxes[i][a].tolist() + c.boxes[j][b].tolist()  # query xywh, neighbour xywh
    # a kNN list longer than the pair lists (a file made with a smaller K): the first K are used
    for row, extra in zip(pa["knn_image_id"], range(N)):
        row.append((extra + 1) % N)
    (tmp_path / "long.json").write_text(json.dumps(data))
    assert_same(c, import_official(tmp_path / "long.json"))
    del data["info"]["knn_image_num"]
    with pytest.raises(CorrespondenceError, match="knn_image_num"):
        to_official(Correspondences(c.image_ids, c.file_names, c.boxes, c.knn, c.pairs, data["info"]))


def broken(kind: str) -> Correspondences:
    c = make(3)
    if kind == "neighbour out of range":
        c.knn[2, 1] = N
    elif kind == "neighbour is itself":
        c.knn[2, 1] = 2
    elif kind == "neighbour twice":
        c.knn[2, 2] = c.knn[2, 0]
    elif kind == "pair out of range":
        c.pairs[5][2][0, 1] = 99
    elif kind == "box outside image":
        c.boxes[4][0] = [SIZES[4][0] - 10, 0, 20, 20]
    return c


MESSAGES = {"neighbour out of range": r"image 2 \(id 106, 000000000002.jpg\): neighbour 1 "
                                      r"\(position 7\) is out of range \[0, 7\)",
            "neighbour is itself": r"image 2 .*neighbour 1 \(position 2\) is the image itself",
            "neighbour twice": r"image 2 .*neighbour 2 \(position \d\) is listed twice",
            "pair out of range": r"image 5 .*neighbour 2 .*pair \[\d+, 99\] is out of range",
            "box outside image": r"image 4 .*box \[230.0, 0.0, 20.0, 20.0\] lies outside the 240x170 image"}


@pytest.mark.parametrize("kind", MESSAGES)
def test_validation_names_the_problem(kind):
    with pytest.raises(CorrespondenceError, match=MESSAGES[kind]):
        broken(kind).validate(image_sizes=SIZES)


def rewrite_npz(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {key: z[key] for key in z.files}
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("kind", ["neighbour out of range", "pair out of range", "box outside image"])
def test_load_rejects_a_bad_file(tmp_path, kind):
    path = tmp_path / "corr.npz"
    make(3).save(path)
    bad = broken(kind)
    flat_pairs = [p for row in bad.pairs for p in row]
    rewrite_npz(path, knn=bad.knn, boxes=np.concatenate(bad.boxes),
                pairs=np.concatenate(flat_pairs).astype(np.int64))
    with pytest.raises(CorrespondenceError, match=MESSAGES[kind]):
        Correspondences.load(path, image_sizes=SIZES)


def test_load_rejects_wrong_count_version_and_damage(tmp_path):
    path = tmp_path / "corr.npz"
    make().save(path)
    with pytest.raises(CorrespondenceError, match=f"wrong image count: the correspondences cover "
                                                  f"{N} images, the dataset has {N + 1}"):
        Correspondences.load(path, n_images=N + 1)
    with pytest.raises(CorrespondenceError, match=f"wrong image count: {N - 1} image sizes"):
        Correspondences.load(path, image_sizes=SIZES[:-1])
    rewrite_npz(path, boxes=np.zeros((2, 4), np.float32))
    with pytest.raises(CorrespondenceError, match="damaged file"):
        Correspondences.load(path)
    rewrite_npz(path, format_version=np.int64(FORMAT_VERSION + 1))
    with pytest.raises(CorrespondenceError, match="format_version 2, this orl-bench reads version 1"):
        Correspondences.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CorrespondenceError, match="cannot read correspondence file"):
        Correspondences.load(path)


def test_save_refuses_an_invalid_artifact(tmp_path):
    with pytest.raises(CorrespondenceError, match="is the image itself"):
        broken("neighbour is itself").save(tmp_path / "corr.npz")
    assert not (tmp_path / "corr.npz").exists()


def official_variant(tmp_path: Path, edit) -> Path:
    data = to_official(make(4))
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


def test_official_import_rejects_bad_files(tmp_path):
    def set_knn(d):
        d["pseudo_annotations"]["knn_image_id"][3][0] = N + 5

    def move_pair_box(d):
        d["pseudo_annotations"]["knn_bbox_pair"][1][0][0][5] += 1  # neighbour box's y

    def drop_image(d):
        d["images"]["file_name"].pop()

    def break_entry(d):
        d["pseudo_annotations"]["knn_bbox_pair"][0][1][0] = [1, 2, 3]

    cases = [(set_knn, r"image 3, neighbour 0 \(position 12\) is out of range \[0, 7\)"),
             (move_pair_box, (r"image 1, neighbour 0 .*neighbour side: pair box \[.*\] is not "
                              r"among the image's \d+ boxes")),
             (drop_image, "6 file names but lengths"),
             (break_entry, "image 0, neighbour 1 .*not a list of 8-number rows"),
             (lambda d: d.pop("pseudo_annotations"), "cannot read official correspondence file")]
    for edit, message in cases:
        with pytest.raises(CorrespondenceError, match=message):
            import_official(official_variant(tmp_path, edit))
    good = official_variant(tmp_path, lambda d: None)
    with pytest.raises(CorrespondenceError, match=f"wrong image count: .* covers {N} images, the "
                                                  f"dataset has {N - 1}"):
        import_official(good, n_images=N - 1)
    with pytest.raises(CorrespondenceError, match="lies outside"):
        import_official(good, image_sizes=[(30, 30)] * N)
