"""The ORL paper's numbers (Tables 1-5, results/paper_reference.yaml): loading and lookups.

Lookup rules (``PaperReference.lookup``):
- A cell is (task, metric, k): ``k`` only for the low-shot columns.
- Variant keys (``VARIANT_KEYS``) select Table 5 rows. Every row stands at its method's paper
  default recipe (the YAML ``defaults`` block) except for the keys it names, and so does the
  query: with no variant the main-table value (Tables 1-4) is returned, a default-valued variant
  (``knn_k=10``) finds the same number, and a method found only in Table 5 (``byol_multicrop``)
  is found at its defaults. Main tables are searched before the ablations.
- ``pretrain_data`` (default ``"coco"``; our embedded runs stand in for COCO) must equal the
  row's, except: random-init rows (no data, ``null``) match any value, and the supervised rows
  (``imagenet``) match ``"imagenet"``, ``"coco"`` and ``None``.
- A "-" in the paper, a cell the paper lacks, or a variant key outside ``VARIANT_KEYS`` (filter
  records' settings through it) gives ``None``. The ``reference_checks`` block (the
  reference suites' model-zoo numbers) is never used by ``lookup``; see ``reference_check``.
"""
from __future__ import annotations

import importlib.resources as resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

RESOURCE_PACKAGE = "orl_bench.recipes.reference"
FILE_NAME = "paper_reference.yaml"
REPO_PATH = Path(__file__).resolve().parents[2] / "results" / FILE_NAME
VARIANT_KEYS = ("losses", "knn_k", "pair_ratio", "boxes", "epochs", "views")
_COLUMN_KEYS = {"task", "metric", "k", "layer", "label"}
_ROW_KEYS = {"method", "pretrain_data", "values", "label"}


class PaperReferenceError(ValueError):
    """The reference YAML is malformed; the message names the table and row."""


def normalize_variant(key: str, value: Any) -> Any:
    """Comparable form of one setting: losses order-free, views "2x224+4x96", ints, ratios."""
    if key not in VARIANT_KEYS:
        raise ValueError(f"unknown variant key {key!r}; known: {list(VARIANT_KEYS)}")
    if key == "losses":
        return tuple(sorted(str(v) for v in ([value] if isinstance(value, str) else value)))
    if key in ("knn_k", "epochs", "pair_ratio"):
        return int(value) if key != "pair_ratio" else round(float(value), 6)
    return str(value).replace(" ", "").lower() if key == "views" else str(value)


@dataclass(frozen=True)
class Column:
    key: str  # the column's key in the YAML
    task: str
    metric: str
    k: int | None  # low-shot columns only
    layer: str | None  # reference checks only
    label: str


@dataclass(frozen=True)
class Row:
    method: str
    pretrain_data: str | None
    values: dict[str, float]  # column key -> number; a "-" in the paper is absent
    variant: dict[str, Any]  # the Table 5 settings this row names, as written in the YAML
    label: str  # as the paper names the row, e.g. "BYOL (COCO+)" or "ORL, K = 1"

    def as_dict(self) -> dict[str, Any]:
        """Flat dict: method, pretrain_data, label, variant keys, then column key -> value."""
        return {"method": self.method, "pretrain_data": self.pretrain_data, "label": self.label,
                **self.variant, **self.values}


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    kind: str  # main | ablation | reference_check
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: str
    # rows of ours the paper's table lacks (methods it reports in another table), run beside its
    # rows and shown without a paper number
    extra_rows: tuple[Row, ...] = ()

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


def _data_matches(row: Row, wanted: str | None) -> bool:
    """Random init (no data) matches anything; supervised (imagenet) also "coco" and None (a
    self-supervised row pretrained on ImageNet, a plugin's, only "imagenet")."""
    return row.pretrain_data is None or row.pretrain_data == wanted or (
        row.method == "supervised" and row.pretrain_data == "imagenet" and wanted in ("coco", None))


class PaperReference:
    def __init__(self, tables: dict[str, PaperTable], defaults: dict[str, dict], source: str,
                 names: dict | None = None):
        self._tables, self.source, self.names = tables, source, names or {}  # display names
        self._defaults = {m: {k: normalize_variant(k, v) for k, v in d.items()}
                          for m, d in defaults.items()}

    def _settings(self, method: str, variant: dict[str, Any]) -> frozenset:
        merged = dict(self._defaults.get(method, {}))
        merged.update({k: normalize_variant(k, v) for k, v in variant.items()})
        return frozenset(merged.items())

    def tables(self) -> list[tuple[str, str]]:
        """(name, title) of every table in file order; ``reference_checks`` comes last."""
        return [(name, t.title) for name, t in self._tables.items()]

    def table(self, name: str) -> PaperTable:
        """One table: ``.title``, ``.columns`` and ``.rows`` (iterating it yields the rows)."""
        if name not in self._tables:
            raise KeyError(f"no paper table {name!r}; known: {', '.join(self._tables)}")
        return self._tables[name]

    def lookup(self, task: str, metric: str, method: str, pretrain_data: str | None = "coco",
               k: int | None = None, **variant: Any) -> float | None:
        """The paper's number for this cell (Tables 1-5), or None; rules in the module docstring."""
        return self._find(("main", "ablation"), task, metric, k, None, method, pretrain_data,
                          variant)

    def reference_check(self, task: str, metric: str, method: str, k: int | None = None,
                        layer: str | None = None) -> float | None:
        """A reference-suite number, e.g. ("voc07_svm", "mAP", "supervised", layer="res5") ->
        87.17; the random-init check is layer="best"."""
        return self._find(("reference_check",), task, metric, k, layer, method, None, {})

    def _find(self, kinds: tuple[str, ...], task: str, metric: str, k: int | None,
              layer: str | None, method: str, data: str | None, variant: dict) -> float | None:
        if set(variant) - set(VARIANT_KEYS):
            return None  # a setting the paper never varies: no paper cell
        cell = (task, metric, None if k is None else int(k), layer)
        wanted = self._settings(method, variant)
        for t in [t for kind in kinds for t in self._tables.values() if t.kind == kind]:
            for row in t.rows:
                if (row.method == method and _data_matches(row, data)
                        and self._settings(method, row.variant) == wanted):
                    for c in t.columns:
                        if c.key in row.values and (c.task, c.metric, c.k, c.layer) == cell:
                            return row.values[c.key]
        return None


def _parse_table(name: str, raw: Any, source: str, kinds: tuple, names: dict) -> PaperTable:
    def check(ok: Any, msg: str) -> None:
        if not ok:
            raise PaperReferenceError(f"{source}: table {name!r}: {msg}")

    check(isinstance(raw, dict), "must be a mapping with title, kind, columns and rows")
    kind = raw.get("kind")
    check(isinstance(raw.get("title"), str) and kind in kinds,
          f"needs a string 'title' and a 'kind' in {kinds} (got {kind!r})")
    check(isinstance(raw.get("columns"), dict) and raw["columns"],
          "'columns' must be a non-empty mapping of column key -> {task, metric, ...}")
    columns = []
    for key, c in raw["columns"].items():
        check(isinstance(c, dict) and isinstance(c.get("task"), str)
              and isinstance(c.get("metric"), str) and not set(c) - _COLUMN_KEYS
              and type(c.get("k", 0)) is int,
              f"column {key!r} must be {{task, metric, optional k (int), layer, label}}: {c!r}")
        columns.append(Column(str(key), c["task"], c["metric"], c.get("k"), c.get("layer"),
                              str(c.get("label", key))))
    check(isinstance(raw.get("rows"), list) and raw["rows"], "'rows' must be a non-empty list")
    rows, keys = [], [c.key for c in columns]
    for i, r in enumerate(raw["rows"], 1):
        where = f"row {i}" + (f" ({r.get('method')})" if isinstance(r, dict) else "")
        check(isinstance(r, dict) and isinstance(r.get("method"), str),
              f"{where}: needs a 'method' string, got {r!r}")
        check("pretrain_data" in r and isinstance(r["pretrain_data"], (str, type(None))),
              f"{where}: needs 'pretrain_data' (coco, coco_plus, imagenet or null)")
        values = r.get("values")
        check(isinstance(values, dict) and values,
              f"{where}: 'values' must be a non-empty mapping of column key -> number")
        for key, v in values.items():
            check(key in keys, f"{where}: {key!r} is not a column of this table (columns: {keys})")
            check(type(v) in (int, float), f"{where}: value for {key!r} must be a number: {v!r}")
        variant = {k: v for k, v in r.items() if k not in _ROW_KEYS}
        _check_variant(f"table {name!r}: {where}", variant, source)
        method, data = r["method"], r["pretrain_data"]
        label = names.get("methods", {}).get(method, method) + (
            f" ({names.get('pretrain_data', {}).get(data, data)})" if data else "")
        rows.append(Row(method, data, {k: float(v) for k, v in values.items()}, variant,
                        str(r.get("label", label))))
    extra = []
    for i, r in enumerate(raw.get("extra_rows") or [], 1):
        check(isinstance(r, dict) and set(r) == {"method", "pretrain_data"} and isinstance(r["method"], str),
              f"extra row {i} must be {{method, pretrain_data}} (no values: the paper has none), got {r!r}")
        data = r["pretrain_data"]
        label = names.get("methods", {}).get(r["method"], r["method"]) + (
            f" ({names.get('pretrain_data', {}).get(data, data)})" if data else "")
        extra.append(Row(r["method"], data, {}, {}, f"{label}, not in this table of the paper"))
    return PaperTable(name, raw["title"], kind, tuple(columns), tuple(rows),
                      str(raw.get("notes", "")), tuple(extra))


def _check_variant(where: str, variant: dict, source: str) -> None:
    for key, value in variant.items():
        try:
            normalize_variant(key, value)
        except (TypeError, ValueError) as e:
            raise PaperReferenceError(f"{source}: {where}: bad {key}: {value!r}: {e}") from None


def _read_default() -> tuple[str, str]:
    try:
        res = resources.files(RESOURCE_PACKAGE) / FILE_NAME
        if res.is_file():
            return res.read_text(encoding="utf-8"), str(res)
    except (ImportError, OSError, TypeError):
        pass  # not installed (source tree on PYTHONPATH): use the repository copy
    if REPO_PATH.is_file():
        return REPO_PATH.read_text(encoding="utf-8"), str(REPO_PATH)
    raise FileNotFoundError(f"{FILE_NAME} is neither in package {RESOURCE_PACKAGE} nor at "
                            f"{REPO_PATH}")


def _parse(text: str, source: str) -> tuple[dict[str, PaperTable], dict, dict]:
    """(tables, defaults, names) of one reference file, validated."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PaperReferenceError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict) or not data["tables"]:
        raise PaperReferenceError(f"{source}: needs a top-level 'tables' mapping")
    defaults, names = data.get("defaults") or {}, data.get("names") or {}
    for block, mapping in (("defaults", defaults), ("names", names)):
        if not isinstance(mapping, dict) or not all(isinstance(v, dict) for v in mapping.values()):
            raise PaperReferenceError(f"{source}: '{block}' must be a mapping of mappings")
    for method, d in defaults.items():
        _check_variant(f"defaults.{method}", d, source)
    tables = {str(n): _parse_table(str(n), t, source, ("main", "ablation"), names)
              for n, t in data["tables"].items()}
    if data.get("reference_checks") is not None:
        tables["reference_checks"] = _parse_table("reference_checks", data["reference_checks"],
                                                  source, ("reference_check",), names)
    return tables, defaults, names


def load_reference(path: Path | str | None = None, plugins: dict[str, Path] | None = None) -> PaperReference:
    """Load and validate the paper's tables: the packaged copy by default, else the repository's
    results/. `plugins` (method -> file, `Method.paper_reference`) adds each plugin's own paper's
    numbers, in the same layout: its tables are searched after the ORL paper's (whose cells they
    never replace), its names and defaults fill in methods the paper lacks. A malformed file raises
    PaperReferenceError naming the file, table and row."""
    text, source = _read_default() if path is None else (Path(path).read_text("utf-8"), str(path))
    tables, defaults, names = _parse(text, source)
    for method, plugin_path in (plugins or {}).items():
        if not Path(plugin_path).is_file():
            raise PaperReferenceError(f"method {method!r}'s paper_reference {plugin_path} is not a file; expected "
                                      "a YAML of its paper's numbers shipped with its package (package data)")
        plugin_tables, plugin_defaults, plugin_names = _parse(Path(plugin_path).read_text("utf-8"), str(plugin_path))
        tables.update({f"{method}:{name}": table for name, table in plugin_tables.items()})
        defaults = {**plugin_defaults, **defaults}
        names = {block: {**plugin_names.get(block, {}), **names.get(block, {})}
                 for block in {*names, *plugin_names}}
    return PaperReference(tables, defaults, source, names)
