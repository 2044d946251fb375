"""What every case of the bad-input corpus checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hvaeseg.cli import main


def digest(*paths: Path) -> str:
    """sha256 over the names and bytes of every file under ``paths`` (files or folders; missing ones count)."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        h.update(str(path).encode())
        if path.is_file():
            h.update(path.read_bytes())
            continue
        if not path.exists():
            h.update(b"<missing>")
            continue
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def refuses(capsys, argv: list[str], *needles: str, unchanged: tuple[Path, ...] = ()) -> str:
    """Run ``hvaeseg ARGV``; assert exit code 2, one stderr line without a traceback containing every needle
    (case-insensitive), and every path of ``unchanged`` byte-identical before and after. Returns the line."""
    before = digest(*unchanged)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr: {err!r}"
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.endswith("\n"), f"expected one line, got {err!r}"
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in {err!r}"
    assert digest(*unchanged) == before, "an input or an existing output was changed"
    return err.strip()
