"""The output check of an ingest: never an input, never anything but a cube store replaced
(see :mod:`hvaeseg.data.ingest`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from hvaeseg.data.ingest._common import IngestError, PathType, _file_list

#: the options of :func:`ingest_netcdf` / :func:`ingest_geotiff` that name input files, as the CLI spells them
_INPUT_OPTIONS = {"labels": "--labels", "code_table": "--code-table", "scl": "SCL=", "stack": "a stack input"}


def _input_paths(paths: Sequence[PathType], options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(what, path)`` for every input file or folder of one ingest."""
    out = [("", os.fspath(p)) for p in paths]
    for name, value in (options.get("band_files") or {}).items():
        out += [(f"{name}=", os.fspath(p)) for p in _file_list(value)]
    for key, what in _INPUT_OPTIONS.items():
        value = options.get(key)
        if value is None or (key == "code_table" and isinstance(value, Mapping)):
            continue
        out += [(what, os.fspath(p)) for p in _file_list(value)]
    return out


def check_output(
    out: PathType,
    inputs: Sequence[tuple[str, str]] = (),
    overwrite: bool = False,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Refuse, before anything is read, an output that is an input or would replace what is not a cube store.

    An existing ``out`` is only ever replaced (``overwrite``) when it is a cube store (a Zarr group with
    ``hvaeseg_schema_version``): a plain file (e.g. the label NetCDF, taken as the output when the output
    argument was forgotten) or a folder that is not a cube is refused whatever ``overwrite`` says, and so is
    an ``out`` that is (or holds) one of ``inputs``; then :func:`hvaeseg.data.store.check_output_free` applies.

    :param inputs: ``(what, path)`` pairs, ``what`` naming the option in messages (``"--labels"``).
    :raises IngestError: ``out`` is, or holds, an input.
    :raises FileExistsError: ``out`` exists and is not a cube store, or is one and ``overwrite`` is false.
    """
    from hvaeseg.data.store import _Location, check_output_free

    loc = _Location(out, storage_options)
    fix = "give a new store path as the last argument (the output), e.g. site.zarr"
    if loc.local:
        target = os.path.realpath(loc.root)
        for what, path in inputs:
            real = os.path.realpath(path)
            if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                held = "is also" if real == target else f"holds {path},"
                raise IngestError(
                    f"the output {out} {held} an input of this command{f' ({what})' if what else ''}: writing the "
                    f"cube would replace it; {fix}"
                )
    if loc.exists():
        problem = _not_a_cube_store(loc, out, storage_options)
        if problem:
            raise FileExistsError(
                f"the output {out} {problem} and is never replaced (--overwrite only replaces a cube store "
                f"written by hvaeseg); if the output argument was forgotten, the last input was taken for it: {fix}"
            )
    check_output_free(out, overwrite, storage_options=storage_options)


def _not_a_cube_store(loc: Any, out: PathType, storage_options: Mapping[str, Any] | None) -> str | None:
    """Why the existing ``out`` is not a cube store, or None when it is one."""
    from hvaeseg.data.store import open_cube

    if loc.local and not os.path.isdir(loc.root):
        return "is an existing file, not a cube store,"
    if loc.local and not os.listdir(loc.root):
        return None  # an empty folder: nothing to lose
    try:
        attrs = open_cube(out, storage_options=storage_options, validate=False).attrs
    except (FileNotFoundError, ValueError):
        return "is an existing folder that is not a cube store (no Zarr group),"
    except Exception:  # noqa: BLE001 - whatever cannot be opened is not a cube to replace
        return "exists and cannot be opened as a cube store,"
    if "hvaeseg_schema_version" not in attrs:
        return "is a Zarr store but not a cube (no hvaeseg_schema_version attribute),"
    return None
