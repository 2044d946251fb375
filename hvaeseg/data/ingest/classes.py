"""Code tables and labels: reading ``{code: name}`` tables, checking class names, and mapping a label map's
codes to class ids ``0 .. K-1`` (void -1) with their attributes (see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hvaeseg.data.ingest._common import IngestError, PathType
from hvaeseg.data.schema import class_attrs

_CODE_COLUMNS = {"CT": ("croptype", "ct", "code"), "LC": ("landcover", "lc", "code")}


_TABLE_HINT = (
    "expected a CSV with a header row naming a code column and a name column, e.g. `code,name` then `1,cloud_shadow` "
    "(WorldCereal tables: `name,croptype,...`), or JSON {\"1\": \"cloud_shadow\", ...}"
)


def read_code_table(
    path: PathType, *, code_column: str | None = None, name_column: str = "name", label_var: str = "CT"
) -> dict[int, str]:
    """``{code: name}`` from a code table (CLI ``--code-table``): a CSV such as ``wc2eurocrops_map.csv``
    (columns ``name,croptype,...``) or a plain ``code,name`` table, or a JSON file ``{"1": "cloud_shadow", ...}``
    (or a list of ``{"code": 1, "name": "cloud_shadow"}``).

    :param code_column: the CSV column of integer codes; default: the column matching ``label_var``
        (``CT`` -> ``croptype``, ``LC`` -> ``landcover``), else ``code``.
    :raises IngestError: unreadable file, missing columns, non-integer codes, empty names, or one code with
        two names; the message names the file (and line) and the expected layout.
    """
    where = f"code table (--code-table) {path}"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise IngestError(f"{where}: not a text file; {_TABLE_HINT}") from None
    if Path(path).suffix.lower() == ".json":
        return _json_code_table(text, where)
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise IngestError(f"{where}: the code table is empty (no header and data rows); {_TABLE_HINT}")
    cols = {c.lower(): c for c in rows[0] if c is not None}
    if code_column is None:
        for cand in _CODE_COLUMNS.get(label_var.upper(), ()) + (label_var.lower(), "code"):
            if cand in cols:
                code_column = cols[cand]
                break
        else:
            raise IngestError(
                f"{where}: no code column for {label_var!r} among {list(rows[0])}; {_TABLE_HINT} (Python: code_column=)"
            )
    if name_column not in rows[0] and name_column.lower() in cols:
        name_column = cols[name_column.lower()]
    if code_column not in rows[0] or name_column not in rows[0]:
        raise IngestError(
            f"{where}: expected columns {code_column!r} and {name_column!r}, found {list(rows[0])}; {_TABLE_HINT}"
        )
    table: dict[int, str] = {}
    for i, r in enumerate(rows, start=2):
        try:
            code = int(str(r[code_column]).strip())
        except ValueError:
            raise IngestError(f"{where}:{i}: code {r[code_column]!r} is not an integer; {_TABLE_HINT}") from None
        _add_code_name(table, code, r[name_column], f"{where}:{i}")
    return table


def _json_code_table(text: str, where: str) -> dict[int, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IngestError(f"{where}: not valid JSON ({err.msg}, line {err.lineno}); {_TABLE_HINT}") from None
    if isinstance(data, Mapping):
        items = list(data.items())
    elif isinstance(data, list) and all(isinstance(r, Mapping) and {"code", "name"} <= set(r) for r in data):
        items = [(r["code"], r["name"]) for r in data]
    else:
        raise IngestError(f"{where}: expected a JSON object of code: name, got {type(data).__name__}; {_TABLE_HINT}")
    if not items:
        raise IngestError(f"{where}: the code table is empty; {_TABLE_HINT}")
    table: dict[int, str] = {}
    for key, name in items:
        try:
            code = int(str(key).strip())
        except ValueError:
            raise IngestError(f"{where}: code {key!r} is not an integer; {_TABLE_HINT}") from None
        if not isinstance(name, str):
            raise IngestError(f"{where}: the name of code {code} is {name!r}, not a string; {_TABLE_HINT}")
        _add_code_name(table, code, name, where)
    return table


def _add_code_name(table: dict[int, str], code: int, name: Any, where: str) -> None:
    name = "" if name is None else str(name).strip()
    if not name:
        raise IngestError(f"{where}: code {code} has an empty name; name every code or drop its row")
    if code in table and table[code] != name:
        raise IngestError(f"{where}: code {code} is named twice ({table[code]!r} and {name!r})")
    table[code] = name


def _word(name: str) -> str:
    w = re.sub(r"[\s,;]+", "_", name.strip()).strip("_")
    return w or "unnamed"


def _check_class_names(class_names: Sequence[str] | None, classes: Sequence[int] | None) -> list[str] | None:
    """``class_names`` stripped and checked (non-empty single words, unique, one per class code)."""
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise IngestError(
            "class_names (--class-names): expected a list of names (e.g. ['cloud_shadow', 'clear', 'cloud']), "
            f"got the string {class_names!r}"
        )
    names = [str(n).strip() for n in class_names]
    problems = []
    if not names:
        problems.append("no names given")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        problems.append(f"name {', '.join(str(i + 1) for i in empty)} of {len(names)} is empty")
    spaced = [n for n in names if n and re.search(r"\s", n)]
    if spaced:
        problems.append(f"names must be single words (flag_meanings is space-separated), got {spaced}; use '_'")
    dup = sorted({n for n in names if n and names.count(n) > 1})
    if dup:
        problems.append(f"names repeat: {', '.join(dup)}")
    if classes is not None and len(names) != len(list(classes)):
        problems.append(
            f"{len(names)} names for {len(list(classes))} class codes {list(classes)}; "
            "give one name per code, in the same order"
        )
    if problems:
        raise IngestError(f"class_names (--class-names) {names}: " + "; ".join(problems))
    return names


@dataclass
class _LabelMap:
    """A label map read from a file: pixel centres, integer codes ``(y, x)`` and its declared no-data value."""

    y: np.ndarray
    x: np.ndarray
    codes: np.ndarray
    crs: str | None
    source: str
    nodata: float | None = None


def _int_codes(values: Sequence[Any], what: str) -> list[int]:
    if isinstance(values, (str, bytes)):
        raise IngestError(f"{what}: expected a list of integer codes, got the string {values!r}")
    out = []
    for v in values:
        try:
            integral = not isinstance(v, (bool, np.bool_)) and float(v).is_integer()
        except (TypeError, ValueError):
            integral = False
        if not integral:
            raise IngestError(f"{what}: expected integer codes, got {v!r}")
        out.append(int(float(v)))
    return out


def _void_codes(void_codes: Sequence[int] | None, nodata: float | None) -> tuple[list[int], str]:
    """The void codes and a phrase saying where they come from."""
    if void_codes is not None:
        codes = sorted(set(_int_codes(void_codes, "void_codes (--void-codes)")))
        if not codes:
            return codes, "no void codes: --void-codes none"
        return codes, f"void codes from --void-codes: {', '.join(map(str, codes))}"
    codes, why = [0], "void codes by default: 0"
    if nodata is not None and np.isfinite(nodata) and float(nodata).is_integer() and int(nodata) != 0:
        codes.append(int(nodata))
        why += f" and the label file's no-data value {int(nodata)}"
    return codes, why + "; --void-codes sets them"


def _fmt_codes(counts: Mapping[int, int]) -> str:
    return ", ".join(f"{c}: {n:,} px" for c, n in counts.items())


def _map_labels(
    lab: _LabelMap,
    table: Mapping[int, str] | None,
    classes: Sequence[int] | None,
    class_names: Sequence[str] | None = None,
    void_codes: Sequence[int] | None = None,
    table_source: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Class ids ``(y, x)`` int16 (-1 = void) and the label attributes (see :mod:`hvaeseg.data.ingest`)."""
    source, raw = lab.source, np.asarray(lab.codes)
    if raw.dtype.kind not in "iuf":
        raise IngestError(f"{source}: the labels have dtype {raw.dtype}; expected integer class codes")
    known = np.ones(raw.shape, bool)
    if raw.dtype.kind == "f":
        known = np.isfinite(raw)
        frac = known & (raw != np.round(raw))
        if frac.any():
            raise IngestError(
                f"{source}: the labels are not integer class codes ({raw.dtype}, e.g. {raw[frac][0]:g} at "
                f"{int(frac.sum()):,} pixels); expected one integer code per class: reclassify the map to integer "
                "codes before ingesting (NaN is read as void)"
            )
    codes = np.where(known, raw, 0).astype(np.int64)
    void, void_why = _void_codes(void_codes, lab.nodata)
    values, counts = np.unique(codes[known], return_counts=True)
    count = dict(zip(values.tolist(), counts.tolist()))
    present = [c for c in count if c not in void]
    if classes is None:
        keep = [c for c in present if table is None or c in table]
    else:
        keep = _int_codes(classes, "classes (--classes)")
        if len(set(keep)) != len(keep):
            raise IngestError(f"classes (--classes) repeat a code: {keep}")
        bad = [c for c in keep if c in void]
        if bad:
            raise IngestError(
                f"classes (--classes) {keep} include the void code {', '.join(map(str, bad))}: void codes mean "
                f"'no label' ({void_why}); to make code {bad[0]} a class, pass --void-codes with the codes that "
                "mean no label instead (--void-codes none: no void code; Python void_codes=[])"
            )
    if not keep:
        what = "named by the code table" if table is not None else "that is not a void code"
        raise IngestError(
            f"{source}: no pixel has a class code {what} (codes present: {present}; void codes {void}, {void_why})"
        )
    names: list[str] = []
    if class_names is not None:
        if len(class_names) != len(keep):
            raise IngestError(
                f"class_names (--class-names): {len(class_names)} names {list(class_names)} for the {len(keep)} "
                f"classes of {source} (codes {keep}); give one name per class, and the codes in id order with "
                "classes= (--classes)"
            )
        names = list(class_names)
        names_source = "class_names (--class-names)"
    else:
        unnamed = [c for c in keep if table is None or c not in table]
        for c in keep:
            n = _word(table[c]) if table is not None and c in table else f"code_{c}"
            names.append(n if n not in names else f"{n}_{c}")
        names_source = f"code table {table_source}" if table is not None else "no code table"
        if unnamed:
            names_source += (
                f"; codes {', '.join(map(str, unnamed))} named code_<c>: name them with --class-names or "
                "--code-table (a code,name CSV or JSON)"
            )
    lut_codes = np.array(keep, dtype=np.int64)
    order = np.argsort(lut_codes)
    pos = np.searchsorted(lut_codes[order], codes)
    pos = np.clip(pos, 0, len(keep) - 1)
    hit = (lut_codes[order][pos] == codes) & known
    ids = np.where(hit, order[pos], -1).astype(np.int16)
    if not hit.any():
        raise IngestError(
            f"{source}: none of the class codes {keep} (classes, --classes) occurs in the label map (codes present: "
            f"{sorted(count)}); give the codes the file holds"
        )
    parts = []
    as_void = {c: count[c] for c in void if count.get(c)}
    if as_void:
        parts.append(f"code {_fmt_codes(as_void)} ({void_why})")
    else:
        parts.append(f"no pixel holds a void code ({void_why})")
    other = {c: n for c, n in count.items() if c not in void and c not in keep}
    if other:
        why = "not in classes (--classes)" if classes is not None else "not named by the code table"
        parts.append(f"code {_fmt_codes(other)}, {why}")
    if not known.all():
        parts.append(f"NaN ({int((~known).sum()):,} px)")
    attrs = {
        **class_attrs(names), "source_codes": keep, "void_codes": list(void),
        "long_name": "class id (-1 = void)",
        "void_description": f"{int((ids < 0).sum()):,} void pixels (-1): " + "; ".join(parts),
        "class_names_source": names_source,
    }
    return ids, attrs


def _table(code_table: PathType | Mapping[int, str] | None, label_var: str) -> Mapping[int, str] | None:
    if code_table is None or isinstance(code_table, Mapping):
        return code_table
    return read_code_table(code_table, label_var=label_var)


def _table_source(code_table: PathType | Mapping[int, str] | None) -> str | None:
    if code_table is None:
        return None
    return "(mapping)" if isinstance(code_table, Mapping) else Path(code_table).name
