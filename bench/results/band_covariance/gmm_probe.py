"""Diagnostic for issue 10: a per-date, per-pixel semi-supervised Gaussian mixture fitted by EM.

It uses the labelled locations, unlabelled training area and test tiles of a ``bench/compare.py`` run, one mixture
per date (class means and covariances per date), the labelled pixels' classes fixed, the classes that have no
label started at the data's mean. The covariance between bands is ``full``, ``diag`` or ``rankR`` (R leading
eigenvectors plus a diagonal). Prints one JSON line: test accuracy, mean IoU, IoU per class.

    python bench/results/band_covariance/gmm_probe.py RUN_DIR COV [ITERATIONS]
"""

import json
import sys
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from hvaeseg.experiment import open_data  # noqa: E402


def constrain(cov: np.ndarray, kind: str) -> np.ndarray:
    if kind == "diag":
        return np.diag(np.diag(cov))
    if kind.startswith("rank"):
        r = int(kind[4:])
        w, u = np.linalg.eigh(cov)
        w, u = w[::-1], u[:, ::-1]
        low = (u[:, :r] * w[:r]) @ u[:, :r].T
        return low + np.diag(np.clip(np.diag(cov - low), 1e-8, None))
    return cov


def log_joint(x: np.ndarray, mu: np.ndarray, cov: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``(N, K)``: log pi_k + log N(x | mu_k, cov_k) up to a constant."""
    out = []
    for k in range(len(pi)):
        chol = np.linalg.cholesky(cov[k])
        z = np.linalg.solve(chol, (x - mu[k]).T)
        out.append(-0.5 * (z**2).sum(0) - np.log(np.diag(chol)).sum() + np.log(pi[k]))
    return np.stack(out, 1)


def main(run: str, kind: str, iterations: int = 30) -> dict:
    cfg = json.loads(Path(run, "config.json").read_text())
    ds = open_data(cfg["data"], cfg.get("data_seed", 0))
    if isinstance(ds, str):
        ds = xr.open_zarr(ds, chunks=None)
    refl = ds["reflectance"].values.astype(np.float64)
    refl = refl[None] if refl.ndim == 3 else refl  # (T, C, Y, X)
    T, D, Y, X = refl.shape
    valid = ds["valid"].values.astype(bool).reshape(T, Y, X)
    labels = ds["labels"].values.astype(int)
    K = int(labels.max()) + 1
    train = json.loads(Path(run, "plan_train.json").read_text())["patches"]
    tiles = json.loads(Path(run, "plan_eval.json").read_text())["patches"]
    P = cfg["patch_size"]
    labelled = np.zeros((T, Y, X), bool)
    area = np.zeros((Y, X), bool)
    for is_labelled, dates, x0, y0 in zip(train["labelled"], train["t"], train["x"], train["y"]):
        area[y0:y0 + P, x0:x0 + P] = True
        if is_labelled:
            for t in dates:
                labelled[t, y0:y0 + P, x0:x0 + P] = True
    rng = np.random.default_rng(0)
    ridge = 1e-6 * np.eye(D)
    conf = np.zeros((K, K))
    for t in range(T):
        xs = refl[t].reshape(D, -1).T
        lm = (labelled[t] & valid[t] & (labels >= 0)).ravel()
        um = (area & valid[t]).ravel() & ~lm
        xl, yl, xu = xs[lm], labels.ravel()[lm], xs[um]
        if len(xu) > 60000:
            xu = xu[rng.choice(len(xu), 60000, replace=False)]
        mu = np.stack([xl[yl == k].mean(0) if (yl == k).any() else xu.mean(0) for k in range(K)])
        cov = np.stack([np.cov(xu.T) + ridge] * K)  # every class starts with the data's spread
        pi = np.ones(K) / K
        rl = np.eye(K)[yl]
        for _ in range(iterations):
            lp = log_joint(xu, mu, cov, pi)
            ru = np.exp(lp - lp.max(1, keepdims=True))
            ru /= ru.sum(1, keepdims=True)
            ra, xa = np.concatenate([ru, rl]), np.concatenate([xu, xl])
            nk = ra.sum(0) + 1e-9
            mu = (ra.T @ xa) / nk[:, None]
            for k in range(K):
                d = xa - mu[k]
                cov[k] = constrain((ra[:, k, None] * d).T @ d / nk[k], kind) + ridge
            pi = nk / nk.sum()
        for split, dates, x0, y0 in zip(tiles["split"], tiles["t"], tiles["x"], tiles["y"]):
            if split != 2 or dates[0] != t:  # the test tiles of this date
                continue
            xt = refl[t][:, y0:y0 + P, x0:x0 + P].reshape(D, -1).T
            yt = labels[y0:y0 + P, x0:x0 + P].ravel()
            vt = valid[t, y0:y0 + P, x0:x0 + P].ravel() & (yt >= 0)
            np.add.at(conf, (yt[vt], log_joint(xt, mu, cov, pi).argmax(1)[vt]), 1)
    iou = np.diag(conf) / np.maximum(conf.sum(0) + conf.sum(1) - np.diag(conf), 1)
    return {"cube": Path(cfg["data"]).name if "/" in cfg["data"] else cfg["data"], "cov": kind,
            "iterations": iterations, "accuracy": round(float(np.diag(conf).sum() / conf.sum()), 4),
            "mean_iou": round(float(iou[conf.sum(1) > 0].mean()), 4), "pixels": int(conf.sum()),
            "iou": [round(float(v), 3) for v in iou]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30)))
