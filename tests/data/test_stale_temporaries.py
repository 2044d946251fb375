"""What a killed write leaves (temporary siblings of a store, checkpoint temporaries) is removed by the next
write to the same place and is never taken for a finished cube."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from hvaeseg._temporary import is_temporary_name, pid_alive, stale_pid, target_of
from hvaeseg.cli import main
from hvaeseg.data.store import open_cube, write_cube
from hvaeseg.train import atomic_save


def _dead_pid() -> int:
    """The PID of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def test_names():
    assert is_temporary_name("cube.zarr.tmp-123-0a1b2c3d") and is_temporary_name("/x/cube.zarr.old-9-deadbeef/")
    assert is_temporary_name(".checkpoint.pt.tmp-4242") and is_temporary_name("cube.zarr.tmp-0123456789ab")
    assert not is_temporary_name("cube.zarr") and not is_temporary_name("my.tmp-notes.zarr")
    assert target_of("/x/cube.zarr.tmp-123-0a1b2c3d/") == "/x/cube.zarr" == target_of("/x/cube.zarr.old-0123456789ab")
    assert stale_pid(f"c.zarr.tmp-{_dead_pid()}-0a1b2c3d") and not stale_pid(f"c.zarr.tmp-{os.getpid()}-0a1b2c3d")


def test_a_killed_writes_store_is_no_cube_and_the_next_write_removes_it(toy_cube, tmp_path, capsys):
    target = tmp_path / "cube.zarr"
    write_cube(toy_cube, target)
    dead = tmp_path / f"cube.zarr.tmp-{_dead_pid()}-0a1b2c3d"
    live = tmp_path / f"cube.zarr.tmp-{os.getpid()}-0a1b2c3d"  # a write still running: left alone
    shutil.copytree(target, dead)  # a complete-looking store, as a write killed before its rename leaves
    shutil.copytree(target, live)
    shutil.rmtree(target)
    with pytest.raises(ValueError, match="temporary store of a write that did not finish"):
        open_cube(dead)
    assert main(["data", "info", str(dead)]) == 2
    err = capsys.readouterr().err
    assert "not a cube" in err and "Traceback" not in err and err.count("\n") == 1
    write_cube(toy_cube, target)
    assert not dead.exists() and live.exists() and open_cube(target).sizes == toy_cube.sizes


def test_checkpoint_temporaries_of_dead_processes_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    dead = tmp_path / f".checkpoint.pt.tmp-{_dead_pid()}"
    dead.write_bytes(b"half a checkpoint")
    other = tmp_path / f".best.pt.tmp-{_dead_pid()}"  # another file's: not this save's business
    other.write_bytes(b"x")
    atomic_save({"step": 1}, path)
    assert not dead.exists() and other.exists()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])
