"""The paper's reference numbers: every number of the paper's Tables 1-5, lookup rules, loading.

The expected values below are a second transcription of the paper's Tables 1-5 (not read from
the YAML), so a typo in results/paper_reference.yaml fails here.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from orl_bench.results import paper
from orl_bench.results.paper import PaperReferenceError, load_reference

REPO = Path(__file__).resolve().parents[2]

# "method data: values" lines as in the paper's Tables 1-5; "-" = no data (random init).
TABLE1 = """
random -: 9.6 13.7 16.6 4.8
supervised imagenet: 87.5 75.9 51.5 45.4
simclr coco: 78.1 50.9 48.0 22.7
mocov2 coco: 82.2 55.1 48.8 27.8
byol coco: 84.5 57.8 50.5 29.5
orl coco: 86.7 59.0 52.7 31.8
byol coco_plus: 87.0 59.6 52.7 30.9
orl coco_plus: 88.6 60.7 54.1 32.0
"""
TABLE1_CELLS = [("voc07_svm", "mAP", None), ("linear_imagenet", "top1", None),
                ("linear_places205", "top1", None), ("linear_inat18", "top1", None)]
TABLE2 = """
random -: 9.2 9.4 11.1 12.3 14.3 17.4 21.3 23.8
supervised imagenet: 53.0 63.6 73.7 78.8 81.8 83.8 85.2 86.0
simclr coco: 33.3 43.5 52.5 61.1 66.7 70.5 73.7 75.0
mocov2 coco: 39.5 49.3 60.4 69.3 74.1 76.8 79.1 80.1
byol coco: 39.4 50.9 62.2 71.7 76.6 79.2 81.3 82.2
orl coco: 39.6 51.2 63.4 72.6 78.2 81.3 83.6 84.7
byol coco_plus: 41.1 54.3 66.6 75.2 80.1 82.6 84.6 85.4
orl coco_plus: 42.1 54.9 67.4 75.7 81.3 83.7 85.8 86.7
"""
TABLE2_CELLS = [("voc07_lowshot", "mAP", k) for k in (1, 2, 4, 8, 16, 32, 64, 96)]
TABLE3 = """
random -: 1.6 5.0 21.8 44.2
supervised imagenet: 25.4 48.4 56.4 80.4
simclr coco: 23.4 46.4 52.2 77.4
mocov2 coco: 28.2 54.7 57.1 81.7
byol coco: 28.4 55.9 58.4 82.7
orl coco: 31.0 58.9 60.5 84.2
byol coco_plus: 28.3 56.0 59.4 83.6
orl coco_plus: 31.8 60.1 60.9 84.4
"""
TABLE3_CELLS = [("semi_imagenet_1pct", "top1", None), ("semi_imagenet_1pct", "top5", None),
                ("semi_imagenet_10pct", "top1", None), ("semi_imagenet_10pct", "top5", None)]
TABLE4 = """
random -: 32.8 50.9 35.3 29.9 47.9 32.0
supervised imagenet: 39.7 59.5 43.3 35.9 56.6 38.6
simclr coco: 37.0 56.8 40.3 33.7 53.8 36.1
mocov2 coco: 38.5 58.1 42.1 34.8 55.3 37.3
selfemd coco: 39.3 60.1 42.8 - - -
densecl coco: 39.6 59.3 43.3 35.7 56.5 38.4
byol coco: 39.5 59.3 43.2 35.6 56.5 38.2
orl coco: 40.3 60.2 44.4 36.3 57.3 38.9
byol coco_plus: 40.0 60.1 44.0 36.2 57.1 39.0
orl coco_plus: 40.6 60.8 44.5 36.7 57.9 39.3
"""
TABLE4_CELLS = [("coco_maskrcnn", m, None) for m in
                ("box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75")]
# Table 5, VOC07 SVM mAP, COCO: (method, variant, value).
TABLE5 = [
    ("byol", {}, 84.5),  # (a)
    ("orl", {"losses": ["intra"]}, 85.7), ("orl", {"losses": ["inter"]}, 85.9),
    ("orl", {"losses": ["intra", "inter"]}, 86.7),
    ("orl", {"knn_k": 1}, 84.7), ("orl", {"knn_k": 10}, 86.7), ("orl", {"knn_k": 20}, 87.0),  # (b)
    ("orl", {"pair_ratio": 0.05}, 86.1), ("orl", {"pair_ratio": 0.10}, 86.7),
    ("orl", {"pair_ratio": 0.20}, 86.4),
    ("byol_multicrop", {"views": "2x224+4x96"}, 84.0), ("orl", {"views": "2x224+4x96"}, 86.7),
    ("orl", {"boxes": "gt"}, 85.4), ("orl", {"boxes": "selective_search"}, 86.7),  # (d)
    *[("byol", {"epochs": e}, v) for e, v in zip((100, 200, 400, 800, 1600),
                                                 (77.1, 81.8, 83.7, 84.5, 84.9))],  # (e)
    *[("orl", {"epochs": e}, v) for e, v in zip((100, 200, 400, 800, 1600),
                                                (83.5, 85.2, 86.3, 86.7, 87.1))],
]
# Reference checks: torchvision supervised ResNet-50 and random init.
REFERENCE_CHECKS = [
    ("voc07_svm", "supervised", None, "res5", 87.17),
    *[("voc07_lowshot", "supervised", k, None, v) for k, v in zip(
        (1, 2, 4, 8, 16, 32, 64, 96), (52.99, 63.55, 73.70, 78.79, 81.76, 83.75, 85.18, 85.97))],
    ("voc07_svm", "random", None, "best", 30.54),
]


def _main_cells() -> list[tuple]:
    """(task, metric, k, method, pretrain_data, value or None) for every cell of Tables 1-4."""
    out = []
    for text, cells in ((TABLE1, TABLE1_CELLS), (TABLE2, TABLE2_CELLS), (TABLE3, TABLE3_CELLS),
                        (TABLE4, TABLE4_CELLS)):
        for line in text.strip().splitlines():
            head, numbers = line.split(":")
            method, data = head.split()
            assert len(numbers.split()) == len(cells), line
            for (task, metric, k), v in zip(cells, numbers.split()):
                out.append((task, metric, k, method, None if data == "-" else data,
                            None if v == "-" else float(v)))
    return out


MAIN_CELLS = _main_cells()


@pytest.fixture(scope="module")
def ref():
    return load_reference()


def test_counts_match_protocols():
    # 8x4 + 8x8 + 8x4 + 10x6 - 3 "-" = 185 numbers, 24 in Table 5, 10 reference checks.
    assert sum(c[-1] is not None for c in MAIN_CELLS) == 185
    assert len(TABLE5) == 24 and len(REFERENCE_CHECKS) == 10


@pytest.mark.parametrize("task,metric,k,method,data,expected", MAIN_CELLS)
def test_main_table_cell(ref, task, metric, k, method, data, expected):
    assert ref.lookup(task, metric, method, pretrain_data=data, k=k) == expected


def test_yaml_holds_exactly_the_protocol_numbers(ref):
    """No extra, misplaced or duplicated number in Tables 1-4 or 5 of the YAML."""
    got = sorted((c.task, c.metric, c.k or 0, r.method, r.pretrain_data or "", v)
                 for name in ("table1", "table2", "table3", "table4")
                 for r in ref.table(name) for c in ref.table(name).columns
                 for v in [r.values.get(c.key)] if v is not None)
    want = sorted((t, m, k or 0, meth, d or "", v) for t, m, k, meth, d, v in MAIN_CELLS
                  if v is not None)
    assert got == want
    rows5 = [r for name, _ in ref.tables() if name.startswith("table5") for r in ref.table(name)]
    assert sorted(r.values["voc07"] for r in rows5) == sorted(v for _, _, v in TABLE5)


@pytest.mark.parametrize("method,variant,expected", TABLE5)
def test_table5_cell(ref, method, variant, expected):
    assert ref.lookup("voc07_svm", "mAP", method, **variant) == expected


@pytest.mark.parametrize("task,method,k,layer,expected", REFERENCE_CHECKS)
def test_reference_checks(ref, task, method, k, layer, expected):
    assert ref.reference_check(task, "mAP", method, k=k, layer=layer) == expected


def test_brief_examples(ref):
    assert ref.lookup("voc07_svm", "mAP", "orl") == 86.7
    assert ref.lookup("voc07_svm", "mAP", "orl", knn_k=1) == 84.7
    assert ref.lookup("voc07_svm", "mAP", "byol", epochs=100) == 77.1
    assert ref.lookup("voc07_lowshot", "mAP", "byol", k=8) == 71.7
    assert ref.lookup("voc07_svm", "mAP", "random", pretrain_data=None) == 9.6


def test_pretrain_data_rules(ref):
    for data in (None, "coco", "coco_plus", "imagenet"):
        assert ref.lookup("voc07_svm", "mAP", "random", pretrain_data=data) == 9.6
    for data in ("imagenet", "coco", None):
        assert ref.lookup("voc07_svm", "mAP", "supervised", pretrain_data=data) == 87.5
    assert ref.lookup("voc07_svm", "mAP", "supervised") == 87.5  # default "coco"
    assert ref.lookup("voc07_svm", "mAP", "supervised", pretrain_data="coco_plus") is None
    assert ref.lookup("voc07_svm", "mAP", "orl", pretrain_data="coco_plus") == 88.6
    assert ref.lookup("voc07_svm", "mAP", "orl", pretrain_data=None) is None
    assert ref.lookup("voc07_svm", "mAP", "orl", pretrain_data="imagenet") is None


def test_variant_rules(ref):
    # A default-valued variant is the main-table number, on any task.
    assert ref.lookup("linear_imagenet", "top1", "orl", knn_k=10, epochs=800) == 59.0
    assert ref.lookup("coco_maskrcnn", "box_AP", "byol", epochs=800) == 39.5
    # Settings the paper did not run, or only on VOC07.
    assert ref.lookup("voc07_svm", "mAP", "orl", knn_k=5) is None
    assert ref.lookup("linear_imagenet", "top1", "orl", knn_k=1) is None
    assert ref.lookup("voc07_svm", "mAP", "orl", knn_k=1, epochs=100) is None
    assert ref.lookup("voc07_svm", "mAP", "byol", losses=["intra"]) is None
    assert ref.lookup("voc07_svm", "mAP", "orl", pretrain_data="coco_plus", knn_k=1) is None
    # Normalised forms: loss order, a single loss as a string, ratios, views spelling, int-likes.
    assert ref.lookup("voc07_svm", "mAP", "orl", losses=("inter", "intra")) == 86.7
    assert ref.lookup("voc07_svm", "mAP", "orl", losses="intra") == 85.7
    assert ref.lookup("voc07_svm", "mAP", "orl", pair_ratio=0.1) == 86.7
    assert ref.lookup("voc07_svm", "mAP", "byol_multicrop", views="2x224 + 4x96") == 84.0
    assert ref.lookup("voc07_svm", "mAP", "byol_multicrop") == 84.0  # Table 5 only: at defaults
    assert ref.lookup("voc07_svm", "mAP", "byol", views="2x224+4x96") is None
    assert ref.lookup("voc07_svm", "mAP", "orl", epochs=1600.0) == 87.1
    assert ref.lookup("voc07_lowshot", "mAP", "orl", k="96") == 84.7


def test_absent_cells_are_none(ref):
    for metric in ("mask_AP", "mask_AP50", "mask_AP75"):  # "-" in the paper
        assert ref.lookup("coco_maskrcnn", metric, "selfemd") is None
    assert ref.lookup("voc07_svm", "mAP", "selfemd") is None
    assert ref.lookup("voc07_lowshot", "mAP", "orl") is None  # needs k
    assert ref.lookup("voc07_lowshot", "mAP", "orl", k=3) is None
    assert ref.lookup("voc07_svm", "top1", "orl") is None
    assert ref.lookup("voc07_svm", "mAP", "scrl") is None
    assert ref.lookup("voc07_svm", "mAP", "orl", knnk=1) is None  # not a variant key
    assert ref.lookup("voc07_svm", "mAP", "orl", protocol="official") is None


def test_reference_checks_are_not_paper_numbers(ref):
    assert ref.lookup("voc07_svm", "mAP", "supervised") == 87.5
    assert ref.lookup("voc07_lowshot", "mAP", "supervised", k=96) == 86.0
    assert ref.reference_check("voc07_svm", "mAP", "supervised") is None  # which layer?
    assert "torchvision" in ref.table("reference_checks").notes


def test_tables_listing_and_rows(ref):
    names = [n for n, _ in ref.tables()]
    assert names == ["table1", "table2", "table3", "table4", "table5a", "table5b", "table5c",
                     "table5d", "table5e", "reference_checks"]
    assert all(title.strip() for _, title in ref.tables())
    t4 = ref.table("table4")
    assert [c.metric for c in t4.columns] == [m for _, m, _ in TABLE4_CELLS]
    assert [r.method for r in t4] == [line.split()[0] for line in TABLE4.strip().splitlines()]
    selfemd = next(r for r in t4 if r.method == "selfemd").as_dict()
    assert selfemd["method"] == "selfemd" and "ap_mk" not in selfemd and selfemd["ap_bb"] == 39.3
    assert [c.k for c in ref.table("table2").columns] == [1, 2, 4, 8, 16, 32, 64, 96]
    labels = [r.label for r in ref.table("table1")]
    assert "BYOL (COCO+)" in labels and "Supervised (ImageNet)" in labels
    assert ref.table("table5b").rows[0].variant == {"knn_k": 1}
    with pytest.raises(KeyError, match="table1"):
        ref.table("table9")


# --- malformed files --------------------------------------------------------------------------

def _raw() -> dict:
    return yaml.safe_load((REPO / "results" / "paper_reference.yaml").read_text())


def _set(path: tuple, value):
    def mutate(d):
        for key in path[:-1]:
            d = d[key]
        if value is _DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    return mutate


_DELETE = object()
MALFORMED = [
    (_set(("tables", "table2", "rows", 4, "values", "k8"), "71.7x"), r"table2.*row 5 \(byol\)"),
    (_set(("tables", "table2", "rows", 4, "values", "k9"), 70.0), r"'k9' is not a column"),
    (_set(("tables", "table1", "rows", 2, "method"), _DELETE), r"table1.*row 3.*'method'"),
    (_set(("tables", "table3", "rows", 0, "pretrain_data"), _DELETE), r"table3.*row 1.*pretrain"),
    (_set(("tables", "table4", "rows", 1, "values"), {}), r"table4.*row 2 \(supervised\)"),
    (_set(("tables", "table1", "extra_rows", 0, "values"), {"voc07": 80.0}), r"table1.*extra row 1 must be"),
    (_set(("tables", "table5b", "rows", 0, "knnk"), 1), r"table5b.*row 1 \(orl\).*knnk"),
    (_set(("tables", "table5e", "rows", 2, "epochs"), "many"), r"table5e.*row 3.*epochs"),
    (_set(("tables", "table1", "kind"), "mian"), r"table1.*kind"),
    (_set(("tables", "table1", "title"), _DELETE), r"table1.*title"),
    (_set(("tables", "table4", "columns", "ap_bb", "metric"), _DELETE), r"table4.*'ap_bb'"),
    (_set(("tables", "table2", "columns", "k1", "k"), "one"), r"table2.*'k1'"),
    (_set(("tables", "table1", "rows"), []), r"table1.*rows"),
    (_set(("tables", "table5a", "rows", 1), "orl intra 85.7"), r"table5a.*row 2"),
    (_set(("reference_checks", "rows", 0, "values", "voc07_feat5"), None),
     r"reference_checks.*row 1"),
    (_set(("defaults", "orl", "knn"), 10), r"defaults\.orl.*knn"),
    (_set(("defaults",), ["orl"]), r"defaults"),
    (_set(("tables",), _DELETE), r"tables"),
]


@pytest.mark.parametrize("mutate,message", MALFORMED)
def test_malformed_yaml_names_table_and_row(tmp_path, mutate, message):
    raw = _raw()
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(PaperReferenceError, match=message) as info:
        load_reference(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["tables: [unclosed", "- just\n- a list\n", ""])
def test_not_a_reference_document(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PaperReferenceError, match="YAML|tables"):
        load_reference(path)


def test_explicit_path_roundtrip(tmp_path):
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(_raw(), sort_keys=False))
    ref = load_reference(path)
    assert ref.source == str(path) and ref.lookup("voc07_svm", "mAP", "orl") == 86.7


# --- where the default file comes from ----------------------------------------------------------

def test_packaged_resource_is_preferred(tmp_path, monkeypatch):
    """A real package named orl_bench.recipes.reference (as the wheel builds it) is read first."""
    pkg = tmp_path / "reference"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    raw = _raw()
    raw["tables"]["table1"]["title"] = "packaged copy"
    (pkg / "paper_reference.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = importlib.util.spec_from_file_location(paper.RESOURCE_PACKAGE, pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, paper.RESOURCE_PACKAGE, module)
    ref = load_reference()
    assert Path(ref.source) == pkg / "paper_reference.yaml"
    assert dict(ref.tables())["table1"] == "packaged copy"


def test_repository_fallback(monkeypatch):
    monkeypatch.setattr(paper, "RESOURCE_PACKAGE", "orl_bench_no_such_package.reference")
    ref = load_reference()
    assert ref.source == str(REPO / "results" / "paper_reference.yaml")
    assert paper.REPO_PATH == REPO / "results" / "paper_reference.yaml"
    assert ref.lookup("voc07_svm", "mAP", "orl") == 86.7


def test_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(paper, "RESOURCE_PACKAGE", "orl_bench_no_such_package.reference")
    monkeypatch.setattr(paper, "REPO_PATH", tmp_path / "nothing.yaml")
    with pytest.raises(FileNotFoundError, match="nothing.yaml"):
        load_reference()


def test_pyproject_ships_the_yaml():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"][paper.RESOURCE_PACKAGE] == "results"
    assert paper.FILE_NAME in setuptools["package-data"][paper.RESOURCE_PACKAGE]


@pytest.mark.slow
def test_wheel_contains_the_yaml(tmp_path):
    """Build the wheel from a copy of the tree (no network) and find the file where
    importlib.resources will look for it."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in ("orl_bench", "results", "pretrain", "benchmarks"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    (src / "README.md").touch()
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")], check=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "orl_bench/recipes/reference/paper_reference.yaml" in names


PLUGIN_TABLE = """
names: {methods: {newmethod: New method, byol: Not BYOL}}
tables:
  t:
    title: a plugin's paper
    kind: main
    columns: {voc07: {task: voc07_svm, metric: mAP}}
    rows:
      - {method: newmethod, pretrain_data: coco, values: {voc07: 12.5}}
      - {method: byol, pretrain_data: coco, values: {voc07: 1.0}}
"""


def test_a_plugins_numbers_join_the_papers_without_replacing_any(ref, tmp_path):
    plugin_file = tmp_path / "numbers.yaml"
    plugin_file.write_text(PLUGIN_TABLE)
    merged = load_reference(plugins={"newmethod": plugin_file})
    assert merged.lookup("voc07_svm", "mAP", "newmethod") == 12.5 and ref.lookup("voc07_svm", "mAP", "newmethod") is None
    assert merged.lookup("voc07_svm", "mAP", "byol") == ref.lookup("voc07_svm", "mAP", "byol") != 1.0
    assert merged.names["methods"]["newmethod"] == "New method" and merged.names["methods"]["byol"] == "BYOL"
    plugin_file.write_text(PLUGIN_TABLE.replace("12.5", "'twelve'"))
    with pytest.raises(PaperReferenceError, match=rf"{plugin_file}: table 't': row 1 \(newmethod\): value for 'voc07'"):
        load_reference(plugins={"newmethod": plugin_file})
    with pytest.raises(PaperReferenceError, match=r"method 'newmethod'.s paper_reference .* is not a file"):
        load_reference(plugins={"newmethod": tmp_path / "absent.yaml"})
