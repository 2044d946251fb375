"""Codec comparison for cube stores: write speed, size, full-read speed and random patch reads.

Usage::

    python bench/codecs.py [--repeats 5] [--patches 200] [--standin] [--variants] [--out results.json]

Writes the same realistic cube (``hvaeseg.data.synthetic.make_cube("small")`` when available, else a
stand-in of smooth fields + noise in uint16 DN 500-4000 with bright flat clouds, same shape: 12 dates x
10 bands x 512 x 512) with each codec through :func:`hvaeseg.data.store.write_cube` (default chunks:
one date, all bands, 256 x 256) to a local temporary directory, then reads it back:

- ``write_MBps``: raw (uncompressed) bytes of the cube / wall time of ``write_cube`` (best of the
  rounds; each round measures every codec once, so a busy spell on the machine hits all alike);
- ``ratio``: raw bytes / bytes on disk (whole store; ``reflectance_ratio`` for that array alone);
- ``read_MBps``: raw bytes / wall time to open and load every variable (best round; the store
  is in the page cache, so this measures decoding, the part a codec decides);
- ``patches_per_s``: random 128 x 128 windows, all bands of one random date, read straight from the
  zarr array (each touches 1-4 chunks), the access pattern of a patch sampler without a chunk cache;
- ``*_cpu_*``: the same per CPU second of this process (all threads), which a busy machine disturbs
  far less than wall time: compare codecs by these when the load average is high.

``none`` (no compression) is the reference row. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hvaeseg.data.bands import L2A_BANDS, band_coords  # noqa: E402
from hvaeseg.data.schema import SCHEMA_VERSION, class_attrs, valid_from_scl  # noqa: E402
from hvaeseg.data.store import CODECS, open_cube, write_cube  # noqa: E402


def _smooth(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A Gaussian random field with correlation length ~``scale`` pixels, unit variance."""
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    spectrum = np.exp(-0.5 * (ky**2 + kx**2) * (2 * np.pi * scale) ** 2)
    noise = np.fft.rfft2(rng.standard_normal(shape))
    field = np.fft.irfft2(noise * spectrum, s=shape)
    return (field - field.mean()) / (field.std() + 1e-12)


def standin_cube(n_dates: int = 12, size: int = 512, seed: int = 0) -> xr.Dataset:
    """A realistic stand-in: per-band smooth reflectance (DN 500-4000), texture, noise, clouds."""
    rng = np.random.default_rng(seed)
    bands = L2A_BANDS
    h = w = size
    classes = np.digitize(_smooth(rng, (h, w), 24.0), [-0.8, 0.0, 0.7]).astype(np.int16)  # 4 classes
    class_dn = rng.uniform(500, 4000, (4, len(bands)))
    base = class_dn[classes].transpose(2, 0, 1)  # (band, y, x)
    texture = 150.0 * _smooth(rng, (h, w), 3.0)
    refl = np.empty((n_dates, len(bands), h, w), dtype=np.uint16)
    scl = np.empty((n_dates, h, w), dtype=np.uint8)
    for t in range(n_dates):
        gain = 1.0 + 0.05 * rng.standard_normal()
        cloudiness = _smooth(rng, (h, w), 40.0) - (1.8 - 0.3 * (t % 4))
        cloud = np.clip(cloudiness, 0, 1)[None]  # soft-edged, spectrally flat
        dn = base * gain + texture + rng.normal(0, 30, (len(bands), h, w))
        dn = dn * (1 - cloud) + cloud * (5500 + 300 * _smooth(rng, (h, w), 10.0))
        refl[t] = np.clip(np.round(dn), 1, 10000).astype(np.uint16)
        scl[t] = np.where(cloud[0] > 0.3, 9, 4)
    ds = xr.Dataset(
        {
            "reflectance": (("time", "band", "y", "x"), refl, {"scale_factor": 1e-4, "add_offset": -0.1}),
            "scl": (("time", "y", "x"), scl),
            "labels": (("y", "x"), classes, class_attrs(["a", "b", "c", "d"])),
        },
        coords={
            "time": np.datetime64("2024-01-05", "ns") + np.arange(n_dates) * np.timedelta64(30, "D"),
            **band_coords(bands),
            "y": 5e6 - 10.0 * np.arange(h) - 5,
            "x": 6e5 + 10.0 * np.arange(w) + 5,
        },
        attrs={"crs": "EPSG:32631", "hvaeseg_schema_version": SCHEMA_VERSION},
    )
    ds["valid"] = valid_from_scl(ds["scl"], ds["reflectance"])
    return ds


def load_cube(standin: bool) -> tuple[xr.Dataset, str]:
    if not standin:
        try:
            from hvaeseg.data.synthetic import make_cube

            return make_cube("small"), "hvaeseg.data.synthetic.make_cube('small')"
        except (ImportError, AttributeError):
            pass
    return standin_cube(), "bench/codecs.py standin_cube() (smooth fields + texture + noise + clouds)"


def _du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def variants() -> list[tuple[str, object]]:
    """Extra codec settings (``--variants``): levels and bit shuffle, to see where the defaults sit."""
    from zarr.codecs import BloscCodec, ZstdCodec

    return [
        ("zstd-l1", ZstdCodec(level=1)),
        ("blosc-lz4-l9", BloscCodec(cname="lz4", clevel=9, shuffle="shuffle")),
        ("blosc-zstd-l1", BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")),
        ("blosc-zstd-l3", BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")),
        ("blosc-zstd-l3-bitshuffle", BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")),
    ]


def measure_once(ds: xr.Dataset, codec: object, path: str, picks: list[tuple[int, int, int]]) -> dict:
    """One round for one codec: write, size, full read, patch reads (wall and CPU seconds)."""
    import zarr

    out = {}
    shutil.rmtree(path, ignore_errors=True)
    t, c = time.perf_counter(), time.process_time()
    write_cube(ds, path, codec=codec)
    out["write"], out["write_cpu"] = time.perf_counter() - t, time.process_time() - c
    out["size"] = _du(path)
    out["refl_size"] = _du(os.path.join(path, "reflectance"))
    t, c = time.perf_counter(), time.process_time()
    open_cube(path, validate=False).load()
    out["read"], out["read_cpu"] = time.perf_counter() - t, time.process_time() - c
    arr = zarr.open_array(os.path.join(path, "reflectance"), mode="r")
    arr[0, :, 0:128, 0:128]  # warm up
    t, c = time.perf_counter(), time.process_time()
    for ti, y0, x0 in picks:
        arr[ti, :, y0 : y0 + 128, x0 : x0 + 128]
    out["patch"], out["patch_cpu"] = time.perf_counter() - t, time.process_time() - c
    shutil.rmtree(path, ignore_errors=True)
    return out


def bench_codecs(
    ds: xr.Dataset, todo: list[tuple[str, object]], workdir: str, repeats: int, n_patches: int, seed: int
) -> list[dict]:
    """Every codec once per round, ``repeats`` rounds (so a busy spell hits all codecs alike); best of rounds."""
    raw = ds.nbytes
    nt, h, w = ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]
    rng = np.random.default_rng(seed)
    picks = [(int(rng.integers(nt)), int(rng.integers(h - 128 + 1)), int(rng.integers(w - 128 + 1)))
             for _ in range(n_patches)]
    rounds: dict[str, list[dict]] = {label: [] for label, _ in todo}
    for _ in range(repeats):
        for label, codec in todo:
            rounds[label].append(measure_once(ds, codec, os.path.join(workdir, f"{label}.zarr"), picks))
    results = []
    for label, _ in todo:
        r = rounds[label]

        def best(key: str, r=r) -> float:
            return min(x[key] for x in r)

        results.append(
            {
                "codec": label,
                "write_MBps": round(raw / best("write") / 1e6, 1),
                "ratio": round(raw / r[0]["size"], 3),
                "reflectance_ratio": round(ds["reflectance"].nbytes / r[0]["refl_size"], 3),
                "stored_MB": round(r[0]["size"] / 1e6, 2),
                "read_MBps": round(raw / best("read") / 1e6, 1),
                "patches_per_s": round(n_patches / best("patch"), 1),
                "write_cpu_MBps": round(raw / best("write_cpu") / 1e6, 1),
                "read_cpu_MBps": round(raw / best("read_cpu") / 1e6, 1),
                "patches_per_cpu_s": round(n_patches / best("patch_cpu"), 1),
            }
        )
    return results


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="rounds over all codecs; the best round counts")
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--standin", action="store_true", help="use the stand-in cube even if the generator exists")
    ap.add_argument("--variants", action="store_true", help="also measure other levels / bit shuffle")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    import numcodecs
    import zarr

    ds, source = load_cube(args.standin)
    ds = ds.load()
    with tempfile.TemporaryDirectory(prefix="hvaeseg-codecs-") as workdir:
        todo: list[tuple[str, object]] = [(c, c) for c in CODECS]
        if args.variants:
            todo += variants()
        results = bench_codecs(ds, todo, workdir, args.repeats, args.patches, seed=0)
    report = {
        "benchmark": "codecs",
        "cube": source,
        "dims": {str(k): int(v) for k, v in ds.sizes.items()},
        "raw_MB": round(ds.nbytes / 1e6, 2),
        "chunks": "time=1, band=all, y=256, x=256",
        "repeats": args.repeats,
        "patches": args.patches,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "zarr": zarr.__version__,
            "numcodecs": numcodecs.__version__,
            "xarray": xr.__version__,
        },
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
