"""Cubes on object storage: a local S3 server (moto's server mode, in a thread of the test process; never the
internet) stands in for S3. The same cube on disk and on "S3" trains to the same parameters and predicts the same
arrays; ``data info``, ``ingest`` and ``predict`` work on URLs; writes are atomic as the store allows; storage
options are checked."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
import warnings

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from hvaeseg.cli import main  # noqa: E402
from hvaeseg.data.integrity import MissingChunkError  # noqa: E402
from hvaeseg.data.store import _Location, atomic_zarr_write, open_cube, write_cube  # noqa: E402

from .conftest import loader_cube  # noqa: E402

#: the credentials the local server is given (moto accepts any); a secret that must never reach a run folder
KEY, SECRET = "hvaeseg-test-key", "hvaeseg-test-secret-do-not-store"


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3 server for the session (moto, threaded, on a free port): its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket on the local server, reached through the environment variables botocore reads (nothing of
    the user's ~/.aws). Returns its name."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    import s3fs

    name = f"hvaeseg-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return name


def _s3():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _parameters(run) -> dict:
    import torch

    modules = torch.load(run / "checkpoint.pt", weights_only=True)["method"]["modules"]
    return {f"{m}.{k}": v for m, state in modules.items() for k, v in state.items()}


def test_a_cube_on_s3_trains_and_predicts_as_on_disk(bucket, s3_endpoint, tmp_path, capsys):
    """A synthetic cube (64 x 64, 3 dates), on disk and copied object for object to S3: training (2 steps) gives equal
    parameters, and predictions (written to S3 for the S3 run) equal arrays. The run folder keeps the URL, never
    the credentials given by --storage-options."""
    import torch

    from hvaeseg.data.synthetic import write_synthetic

    local = write_synthetic(tmp_path / "tiny.zarr", "tiny", 0, size=64, n_dates=3)  # small: two runs, two predictions
    _s3().put(str(local), f"{bucket}/tiny.zarr", recursive=True)
    url = f"s3://{bucket}/tiny.zarr"
    common = ["--method", "supervised", "--labels", "2", "--steps", "2", "--patch-size", "32", "--block", "32",
              "--unlabelled-patches", "8", "--batch-size", "2", "--val-every", "2", "--checkpoint-every", "2"]
    options = json.dumps({"endpoint_url": s3_endpoint, "key": KEY, "secret": SECRET})
    assert main(["train", *common, "--data", str(local), "--out", str(tmp_path / "disk")]) == 0
    assert main(["train", *common, "--data", url, "--out", str(tmp_path / "s3"), "--storage-options", options]) == 0
    a, b = _parameters(tmp_path / "disk"), _parameters(tmp_path / "s3")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for file in (tmp_path / "s3").iterdir():
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file.name
    assert json.loads((tmp_path / "s3" / "config.json").read_text())["data"] == url

    assert main(["predict", str(tmp_path / "disk"), "--out", str(tmp_path / "pred.zarr")]) == 0
    out = f"s3://{bucket}/pred.zarr"
    assert main(["predict", str(tmp_path / "s3"), "--out", out, "--storage-options", options]) == 0
    capsys.readouterr()
    mine, theirs = xr.open_zarr(tmp_path / "pred.zarr", chunks=None), open_cube(out, validate=False)
    for name in ("class_map", "probability"):
        np.testing.assert_array_equal(mine[name].values, theirs[name].values)
    assert not [p for p in _s3().ls(bucket) if ".tmp-" in p]  # the temporary sibling is gone


def test_data_info_reads_a_url_with_storage_options(bucket, s3_endpoint, monkeypatch, capsys):
    url = write_cube(loader_cube(), f"s3://{bucket}/cube.zarr", chunks={"y": 16, "x": 16})
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint comes from --storage-options only
    assert main(["data", "info", url, "--json", "--storage-options", json.dumps({"endpoint_url": s3_endpoint})]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == url


def test_ingest_writes_a_readable_cube_to_s3(bucket, tmp_path, capsys):
    from tests.data.test_folder_format import make_folder

    make_folder(tmp_path / "set", n=2)
    url = f"s3://{bucket}/set.zarr"
    assert main(["data", "ingest", "--format", "folder", str(tmp_path / "set"), "--code-table",
                 str(tmp_path / "set" / "table.csv"), url]) == 0
    assert f"wrote {url}" in capsys.readouterr().out
    ds = open_cube(url)  # validated, every chunk present
    assert ds["labels"].attrs["flag_meanings"].split() == ["road", "tree", "water"]
    assert main(["data", "ingest", "--format", "folder", str(tmp_path / "set"), "--code-table",
                 str(tmp_path / "set" / "table.csv"), url]) == 2  # exists: --overwrite needed
    assert "--overwrite" in capsys.readouterr().err


def test_a_failed_write_leaves_no_store_a_reader_accepts(bucket, monkeypatch):
    """The commit copies the group ``zarr.json`` last: a writer that dies before it leaves nothing that opens;
    one that fails while writing leaves the target as it was and removes its temporary sibling."""
    cube = loader_cube()
    url = f"s3://{bucket}/cube.zarr"
    # an error while writing: nothing at the target, the sibling removed
    with pytest.raises(RuntimeError, match="boom"), atomic_zarr_write(url) as pending:
        cube.to_zarr(pending.url, mode="w-", zarr_format=3, consolidated=True)
        raise RuntimeError("boom")
    assert not _s3().ls(bucket)

    # the writer dies during the commit, after every object but the group zarr.json was copied
    fs = _Location(url).fs  # the (cached) file system the writer will use
    real_copy = fs.copy

    def dies_before_the_marker(path1, path2, *args, **kwargs):
        if isinstance(path1, str) and re.search(r"\.tmp-\d+-[0-9a-f]{8}/zarr\.json$", path1):
            raise KeyboardInterrupt  # killed: no clean-up of the sibling either
        return real_copy(path1, path2, *args, **kwargs)

    with pytest.MonkeyPatch.context() as killed:
        killed.setattr(fs, "copy", dies_before_the_marker)
        killed.setattr(_Location, "remove", lambda self, root: None)
        with pytest.raises(KeyboardInterrupt):
            write_cube(cube, url, chunks={"y": 16, "x": 16})
    keys = _s3().find(bucket)
    assert any(k.startswith(f"{bucket}/cube.zarr/reflectance/") for k in keys)  # most of it is there...
    assert f"{bucket}/cube.zarr/zarr.json" not in keys  # ...but not the group
    with pytest.raises(FileNotFoundError, match="no cube at"):
        open_cube(url)
    with pytest.raises(Exception):  # noqa: B017 - any error: xarray finds no group either
        xr.open_zarr(url, chunks=None, zarr_format=3)
    tmp = next(k for k in _s3().ls(bucket) if ".tmp-" in k)
    with pytest.raises(ValueError, match="temporary store of a write that did not finish"):
        open_cube(f"s3://{tmp}")
    # overwrite replaces what the cut-off commit left; then the store is whole
    write_cube(cube, url, chunks={"y": 16, "x": 16}, overwrite=True)
    np.testing.assert_array_equal(open_cube(url)["reflectance"].values, cube["reflectance"].values)


def test_remote_chunks_are_fetched_in_batches_and_checked(bucket, monkeypatch):
    """The loader's direct chunk reader works on S3: one concurrent ``cat`` per window of chunks, the same
    patches as on disk; a chunk missing from the store is an error naming its URL."""
    from hvaeseg.data.chunks import CubeSource, fill_patches

    cube = loader_cube()
    url = write_cube(cube, f"s3://{bucket}/cube.zarr", chunks={"y": 16, "x": 16})
    src = CubeSource(url, None)
    assert src.refl.remote and src.valid.remote
    calls = []
    fs = src.refl._direct[0]
    real_cat = fs.cat
    monkeypatch.setattr(fs, "cat", lambda paths, **kw: calls.append(len(paths)) or real_cat(paths, **kw))
    B, T, H, W = 3, 2, 20, 20
    ts, ys, xs = np.array([[0, 1], [3, 4], [1, 3]]), [0, 20, 27], [5, 28, 0]
    dn = np.zeros((B, T, 4, H, W), np.uint16)
    valid = np.zeros((B, T, H, W), bool)
    labels = np.zeros((B, H, W), np.int16)
    fill_patches(src, ts, ys, xs, [True] * B, dn, valid, labels)
    refl = cube["reflectance"].values
    for i in range(B):
        np.testing.assert_array_equal(dn[i], refl[ts[i]][:, :, ys[i]:ys[i] + H, xs[i]:xs[i] + W])
        np.testing.assert_array_equal(labels[i], cube["labels"].values[ys[i]:ys[i] + H, xs[i]:xs[i] + W])
    # reflectance, valid, labels: one cat each (each fits one window)
    assert calls == [20, 20, 8], calls  # the distinct chunks the patches touch

    _s3().rm(f"{bucket}/cube.zarr/reflectance/c/1/0/1/1")
    with pytest.raises(MissingChunkError, match=f"s3://{bucket}/cube.zarr/reflectance/c/1/0/1/1"):
        open_cube(url)  # the listing shows it
    with pytest.raises(MissingChunkError, match="c/1/0/1/1"):
        fill_patches(CubeSource(url, None), ts, ys, xs, [True] * B, dn, valid, labels)


def test_other_zarr_stores_fall_back_with_one_warning():
    import zarr

    from hvaeseg.data import chunks

    chunks._STORE_WARNED.discard("MemoryStore")
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=(4, 4), chunks=(2, 2), dtype="uint16")
    arr[:] = np.arange(16).reshape(4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        readers = [chunks.ZarrChunks(arr), chunks.ZarrChunks(arr)]
    assert len([w for w in caught if "MemoryStore" in str(w.message)]) == 1  # once, not per reader
    np.testing.assert_array_equal(readers[0].get((1, 1)), [[10, 11], [14, 15]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "given, message",
    [
        ("{not json", "expected a JSON object"),
        ('["endpoint_url"]', "got a JSON list"),
        ('{"endpoint": "http://localhost:9000"}', "unknown option 'endpoint' for s3:// .*did you mean 'endpoint_url'"),
        ('{"anon": "yes"}', "'anon' is a switch: expected true or false"),
        ('{"endpoint_url": "localhost:9000"}', "endpoint_url: expected an http:// or https:// URL"),
        ("@/no/such/options.json", "cannot read '/no/such/options.json'"),
    ],
)
def test_bad_storage_options_are_clear_errors(given, message, capsys):
    assert main(["data", "info", "s3://some-bucket/cube.zarr", "--storage-options", given]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hvaeseg data: error: --storage-options"), err
    assert re.search(message, err), err


def test_an_unreachable_endpoint_is_a_clear_error(bucket, capsys):
    dead = json.dumps({"endpoint_url": f"http://127.0.0.1:{_free_port()}",
                       "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}})
    assert main(["data", "info", f"s3://{bucket}/cube.zarr", "--storage-options", dead]) == 2
    err = capsys.readouterr().err
    assert "cannot use the object store" in err and "endpoint_url or AWS_ENDPOINT_URL" in err, err
