"""``--storage-options JSON`` of the commands that read or write cubes: one flag, one syntax, one scope.

Every command that names a cube (``train``, ``evaluate``, ``predict``, ``inpaint``, ``data info``,
``data synth``, ``data ingest``) takes ``--storage-options '{"endpoint_url": "http://host:9000"}'`` (or
``@FILE``); :func:`storage_options_of` applies it, for the whole command, to the protocol of the URLs the command
was given (:func:`hvaeseg.data.remote.storage_options_scope`), so that the cube named by a run folder or a
``--config`` file is read with it too. The options are never written anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["STORAGE_OPTIONS_HELP", "add_storage_options", "storage_options_of"]

#: the help of every command's ``--storage-options`` (here, not in hvaeseg.data: building the parser imports
#: nothing heavy)
STORAGE_OPTIONS_HELP = (
    "options of the object store behind s3:// (or other fsspec) URLs: a JSON object of s3fs.S3FileSystem "
    "arguments, e.g. '{\"endpoint_url\": \"http://localhost:9000\", \"anon\": false}', or @FILE to read "
    "that JSON from a file; they apply to the protocol of the URLs given on the command line (s3:// when none "
    "is, e.g. a cube named by the run folder). Credentials are better left to the environment "
    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; also AWS_ENDPOINT_URL, AWS_DEFAULT_REGION); nothing given here "
    "is written to a run folder"
)


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """Add ``--storage-options JSON`` to a command's parser."""
    p.add_argument("--storage-options", dest="storage_options", default=None, metavar="JSON",
                   help=STORAGE_OPTIONS_HELP.replace("%", "%%"))


def _named(args: argparse.Namespace) -> list[Any]:
    """Every string (or path) among the parsed arguments: what may name a store."""
    out: list[Any] = []
    for name, value in vars(args).items():
        if name == "storage_options":
            continue
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, (str, os.PathLike)):
                out.append(item)
    return out


@contextlib.contextmanager
def storage_options_of(args: argparse.Namespace) -> Iterator[None]:
    """Within: the command's ``--storage-options`` (checked first) apply to the protocol of its URLs."""
    from hvaeseg.data.remote import parse_storage_options, storage_options_scope

    options = parse_storage_options(getattr(args, "storage_options", None))
    if not options:
        yield
        return
    with storage_options_scope(options, _named(args)):
        yield
