"""Cubes behind fsspec URLs (``s3://bucket/cube.zarr``): where their storage options come from, and their checks.

A store named by a URL is read and written through fsspec (S3: ``s3fs``, the ``s3`` extra:
``pip install 'hvaeseg[s3]'``). Its *storage options* (endpoint, credentials, ...; for S3 the keyword arguments
of ``s3fs.S3FileSystem``) come from, later ones winning:

1. the environment, read by the file system itself: for S3 botocore's ``AWS_ACCESS_KEY_ID``,
   ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` (an S3-compatible server: MinIO,
   Ceph, ...), ``AWS_DEFAULT_REGION``, ``AWS_PROFILE`` and ``~/.aws``;
2. process-wide defaults of a protocol set by :func:`storage_options_scope` (the command line's
   ``--storage-options JSON``): fsspec's own configuration (``fsspec.config.conf``), so that every file system
   made inside the scope, by hvaeseg, zarr or xarray, gets them;
3. ``storage_options`` passed to a function (:func:`hvaeseg.data.store.open_cube`, ``write_cube``, ...).

No storage option is ever written to a run folder: a run's ``config.json`` keeps the cube's URL only, and
options are given again (or found in the environment) by each command that reads it.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

__all__ = [
    "check_storage_options",
    "is_url",
    "parse_storage_options",
    "protocol_of",
    "remote_errors",
    "storage_options_for",
    "storage_options_scope",
]

#: ``PROTOCOL://`` at the start of a URL (one protocol, or a chain such as ``simplecache::s3://``)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^[A-Za-z][A-Za-z0-9+.-]*::")

#: protocols that are the local file system (paths, not URLs)
_LOCAL = (None, "file", "local")

#: keyword arguments every fsspec file system takes (instance cache, listings cache), whatever its signature says
_COMMON_OPTIONS = frozenset({"skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"})

#: install hints for the file systems of protocols an extra provides
_EXTRAS = {"s3": "s3fs", "s3a": "s3fs"}


def protocol_of(path: str | os.PathLike) -> str | None:
    """The fsspec protocol of ``path`` (``"s3"`` for ``s3://bucket/key``), or ``None`` for a local path."""
    import fsspec.core

    protocol, _ = fsspec.core.split_protocol(os.fspath(path))
    return None if protocol in _LOCAL else protocol


def is_url(path: Any) -> bool:
    """Whether ``path`` is a string naming a store by a (non-local) fsspec URL (``PROTOCOL://...``)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    text = os.fspath(path)
    return isinstance(text, str) and _URL.match(text) is not None and protocol_of(text) is not None


def _filesystem_class(protocol: str, where: str) -> type:
    import fsspec

    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        package = _EXTRAS.get(protocol)
        hint = (f"install it with pip install 'hvaeseg[s3]' (or pip install {package})" if package
                else "install the fsspec implementation of that protocol")
        raise ValueError(f"{where}: {protocol}:// URLs need a package that is not installed ({err}); {hint}") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def parse_storage_options(text: str | None, flag: str = "--storage-options") -> dict[str, Any]:
    """``--storage-options`` as given on the command line: a JSON object, or ``@FILE`` holding one.

    :raises ValueError: not JSON, not an object, or an unreadable ``@FILE``; the message shows the syntax.
    """
    if text is None or not text.strip():
        return {}
    source = "the value"
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise ValueError(f"{flag}: cannot read {path!r} ({err.strerror or err}): give @FILE of a JSON "
                             "object, or the JSON itself") from None
        source = path
    example = '\'{"endpoint_url": "http://localhost:9000", "anon": false}\''
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        shown = "" if source != "the value" else f" {text!r}"  # never echo a file, which may hold secrets
        raise ValueError(f"{flag}: expected a JSON object such as {example}, got{shown} that is not JSON "
                         f"({source}: {err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{flag}: expected a JSON object of option names and values such as {example}, got a "
                         f"JSON {type(options).__name__}")
    return options


def _named_parameters(cls: type[object]) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters ``cls(...)`` names (``None``: it takes ``**kwargs`` only, so nothing can be checked)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    named = {n: p for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named or None


def check_storage_options(options: Mapping[str, Any], protocol: str, flag: str = "--storage-options") -> dict[str, Any]:
    """Check ``options`` against the file system of ``protocol`` (its constructor's named arguments).

    An unknown name would be ignored by fsspec without a word (a typo such as ``endpoint`` for ``endpoint_url``
    would then send requests to AWS), so it is an error naming the close matches. Values are checked where the
    type is clear: a switch (a ``bool`` default) must be ``true``/``false``, ``endpoint_url`` an http(s) URL,
    ``*_kwargs`` objects.

    :returns: the options as a dict.
    :raises ValueError: naming the option and the fix; or the protocol's package is missing.
    """
    if not isinstance(options, Mapping):
        raise ValueError(f"{flag}: expected a mapping of option names to values, got {type(options).__name__}")
    cls = _filesystem_class(protocol, flag)
    named = _named_parameters(cls)
    options = dict(options)
    if named is None:
        return options
    known = set(named) | _COMMON_OPTIONS
    for name, value in options.items():
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ValueError(f"{flag}: unknown option {name!r} for {protocol}:// ({cls.__module__}.{cls.__name__}); "
                             f"{hint}expected some of: {', '.join(sorted(known))}")
        default = named[name].default if name in named else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(f"{flag}: option {name!r} is a switch: expected true or false, got {value!r}")
        if name == "endpoint_url" and value is not None and not (
            isinstance(value, str) and value.startswith(("http://", "https://"))
        ):
            raise ValueError(f"{flag}: endpoint_url: expected an http:// or https:// URL of the S3 server (such as "
                             f"\"http://localhost:9000\"), got {value!r}")
        if name.endswith("_kwargs") and not isinstance(value, dict):
            raise ValueError(f"{flag}: option {name!r}: expected a JSON object, got {type(value).__name__}")
    return options


def storage_options_for(path: str | os.PathLike, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The storage options a file system for ``path`` gets here: the process defaults of its protocol
    (:func:`storage_options_scope`), overridden by ``storage_options``; ``{}`` for a local path. For handing to
    another process (a spawned worker does not inherit the defaults)."""
    protocol = protocol_of(path)
    if protocol is None:
        return dict(storage_options or {})
    import fsspec.config

    return {**fsspec.config.conf.get(protocol, {}), **(storage_options or {})}


@contextlib.contextmanager
def storage_options_scope(
    options: Mapping[str, Any] | None, paths: Iterable[Any] = (), flag: str = "--storage-options"
) -> Iterator[list[str]]:
    """Within: every fsspec file system of the protocols of the URLs among ``paths`` (``s3`` when there is none)
    is made with ``options`` (set as fsspec's configuration of those protocols; restored on leaving).

    :param options: checked by :func:`check_storage_options`; ``None`` or empty: nothing changes.
    :param paths: what the command names (paths, URLs, anything else is ignored).
    :returns: (as the context value) the protocols set.
    """
    if not options:
        yield []
        return
    import fsspec.config

    protocols = sorted({p for p in (protocol_of(x) for x in paths if is_url(x)) if p is not None}) or ["s3"]
    checked = {p: check_storage_options(options, p, flag) for p in protocols}
    saved = {p: fsspec.config.conf.get(p) for p in protocols}
    try:
        for p, opts in checked.items():
            fsspec.config.conf[p] = {**(saved[p] or {}), **opts}
        yield protocols
    finally:
        for p, old in saved.items():
            if old is None:
                fsspec.config.conf.pop(p, None)
            else:
                fsspec.config.conf[p] = old


def _is_client_error(err: BaseException) -> bool:
    """Whether ``err`` comes from an object store's client library (botocore, aiohttp, ...), not from hvaeseg."""
    module = type(err).__module__ or ""
    return module.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "urllib3")


@contextlib.contextmanager
def remote_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn the client library's errors about reaching the store behind ``path`` (no endpoint, no credentials)
    into a :class:`ValueError` naming the URL and what to check. Errors the file system already translates
    (``FileNotFoundError``, ``PermissionError``) pass as they are."""
    try:
        yield
    except Exception as err:
        if not is_url(path) or not _is_client_error(err):
            raise
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"{os.fspath(path)}: cannot use the object store ({type(err).__name__}: {reason}); check the endpoint "
            "(--storage-options endpoint_url or AWS_ENDPOINT_URL), the credentials (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, or --storage-options key/secret) and the bucket name"
        ) from err
