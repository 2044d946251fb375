"""Temporary siblings of files and stores being written (``NAME.tmp-PID-XXXXXXXX`` and the like): who wrote
them, and which are stale (their writer no longer runs), so that a killed command's leftovers are removed by
the next write to the same place and are never taken for finished output."""

from __future__ import annotations

import os
import re

__all__ = ["is_temporary_name", "pid_alive", "stale_pid", "target_of"]

#: ``NAME.tmp-PID-HEX`` / ``NAME.old-PID-HEX`` (stores) and ``.NAME.tmp-PID`` (checkpoints)
_TEMPORARY = re.compile(r"\.(tmp|old)-(?P<pid>\d+)(-[0-9a-f]{8})?$")
#: also the names of older versions (``NAME.tmp-<12 hex>``), which carry no PID
_LEGACY = re.compile(r"\.(tmp|old)-[0-9a-f]{12}$")


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` (a path or its last part) is a temporary sibling of a write in progress or abandoned."""
    name = os.path.basename(os.fspath(name).rstrip("/"))
    return bool(_TEMPORARY.search(name) or _LEGACY.search(name))


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_pid(name: str) -> bool:
    """Whether temporary sibling ``name`` was left by a writer that no longer runs (legacy names, which carry no
    PID, count as stale)."""
    base = os.path.basename(os.fspath(name).rstrip("/"))
    m = _TEMPORARY.search(base)
    if m is not None:
        return not pid_alive(int(m.group("pid")))
    return bool(_LEGACY.search(base))


def target_of(name: str) -> str:
    """The path a temporary sibling was being written for (``X.zarr.tmp-PID-HEX`` -> ``X.zarr``)."""
    name = os.fspath(name).rstrip("/")
    return _LEGACY.sub("", _TEMPORARY.sub("", name))
