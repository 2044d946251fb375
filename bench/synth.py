"""Synthetic cube generation speed on ONE core: ``small`` in memory, ``large`` rendered and streamed.

Usage::

    python bench/synth.py [--cases small,large_generate,large_stream] [--tmp DIR] [--codec NAME] [--out FILE]

Cases (each in its own child process, so that its peak memory is its own):

- ``small``: :func:`hvaeseg.data.synthetic.make_cube` ``("small")`` in memory (512 x 512 x 12 dates x 10 bands);
- ``large_generate``: every date of ``large`` (4096 x 4096 x 24 dates x 10 bands) rendered into reused
  buffers and dropped: generation alone, the part the 2-minute target is about;
- ``large_stream``: :func:`hvaeseg.data.synthetic.write_synthetic` ``("large")`` to a Zarr store in a
  temporary directory on local disk (default codec and chunks), then deleted.

One thread everywhere: ``OMP/MKL/OPENBLAS_NUM_THREADS=1``, ``torch.set_num_threads(1)``, Blosc with one
thread and zarr's codec pool with one worker. ``values`` counts the reflectance and clean reflectance
values (``2 x T x B x H x W``, 8.05e9 for ``large``); ``values_per_s`` = values / seconds (wall clock);
``cpu_seconds`` is the process CPU time (the honest number on a busy machine). Seconds include
building the landscape, not the first imports (a warm-up call runs before the clock starts).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("small", "large_generate", "large_stream")


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)
    try:
        import numcodecs.blosc

        numcodecs.blosc.set_nthreads(1)
    except (ImportError, AttributeError):
        pass
    try:
        import zarr

        zarr.config.set({"threading.max_workers": 1})
    except (ImportError, KeyError, ValueError):
        pass


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_case(case: str, tmp: str | None, size: int | None, n_dates: int | None, codec: str | None) -> dict:
    _one_thread()
    sys.path.insert(0, str(ROOT))
    from hvaeseg.data.synthetic import DateArrays, make_cube, synthetic_cube, write_synthetic
    from hvaeseg.data.synthetic.config import resolve_config

    # warm up: imports (xarray pulls in dask when it is installed), first-call kernels; not timed
    make_cube("tiny", seed=0, size=8, n_dates=1)
    if case == "large_stream":
        with tempfile.TemporaryDirectory(prefix="hvaeseg-synth-warm-", dir=tmp) as warm:
            write_synthetic(os.path.join(warm, "w.zarr"), "tiny", seed=0, size=8, n_dates=1, codec=codec)
    preset = "small" if case == "small" else "large"
    over = {k: v for k, v in (("size", size), ("n_dates", n_dates)) if v is not None and case != "small"}
    out: dict = {"case": case, "preset": preset, **({"overrides": over} if over else {})}
    cpu0 = time.process_time()
    if case == "small":
        t0 = time.perf_counter()
        ds = make_cube("small", seed=0)
        out["seconds"] = time.perf_counter() - t0
        dims = dict(ds.sizes)
    elif case == "large_generate":
        t0 = time.perf_counter()
        cube = synthetic_cube("large", seed=0, **over)
        out["landscape_seconds"] = time.perf_counter() - t0
        buffers = DateArrays.empty(len(cube.config.bands), cube.size)
        per_date = []
        regimes = []
        for t in range(cube.n_dates):
            s = time.perf_counter()
            cube.render(t, buffers)
            per_date.append(time.perf_counter() - s)
            regimes.append(cube.plan(t, fields=False).regime_name)
        out["seconds"] = time.perf_counter() - t0
        out["date_seconds"] = {
            "mean": sum(per_date) / len(per_date),
            "max": max(per_date),
            **{
                f"mean_{r}": sum(d for d, g in zip(per_date, regimes) if g == r) / regimes.count(r)
                for r in ("clear", "partly", "overcast")
                if r in regimes
            },
        }
        out["regimes"] = {r: regimes.count(r) for r in ("clear", "partly", "overcast")}
        h, w = cube.size
        dims = {"time": cube.n_dates, "band": len(cube.config.bands), "y": h, "x": w}
    else:
        with tempfile.TemporaryDirectory(prefix="hvaeseg-synth-", dir=tmp) as workdir:
            path = os.path.join(workdir, "large.zarr")
            t0 = time.perf_counter()
            write_synthetic(path, "large", seed=0, codec=codec, **over)
            out["seconds"] = time.perf_counter() - t0
            out["store_GB"] = _du(path) / 1e9
            out["store_dir"] = workdir
            out["codec"] = codec or "default"
        c = resolve_config("large", 0, **over)
        dims = {"time": c.n_dates, "band": len(c.bands), "y": c.size[0], "x": c.size[1]}
    out["cpu_seconds"] = time.process_time() - cpu0  # all threads of the process: ~seconds on one core
    values = 2 * dims["time"] * dims["band"] * dims["y"] * dims["x"]
    out.update(dims=dims, values=values, values_per_s=values / out["seconds"], peak_rss_MB=_peak_rss_mb())
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--tmp", default=None, help="directory for the temporary store (local disk)")
    ap.add_argument("--size", type=int, default=None, help="override the large size (quick runs)")
    ap.add_argument("--dates", type=int, default=None, help="override the large number of dates (quick runs)")
    ap.add_argument("--codec", default=None, help="codec of the streamed store (default: the store's default)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # child process: run one case, print its JSON
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    if args.case:
        print(json.dumps(run_case(args.case, args.tmp, args.size, args.dates, args.codec)))
        return {}

    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    results = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for case in cases:
        cmd = [sys.executable, __file__, "--case", case]
        for flag, v in (("--tmp", args.tmp), ("--size", args.size), ("--dates", args.dates), ("--codec", args.codec)):
            if v is not None:
                cmd += [flag, str(v)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            results.append({"case": case, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    import numpy
    import torch

    report = {
        "benchmark": "synthetic generation",
        "threads": 1,
        "target": "large generated in under 120 s on one core",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "torch": torch.__version__,
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
