import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.metrics import ConfusionMatrix, error_vs_spread, inpainting_errors, interval_coverage, per_band_rmse


def brute_force(preds, targets, masks, K):
    """Per-pixel loops in numpy: (accuracy, per-class IoU with NaN for absent classes, mean IoU)."""
    m = np.zeros((K, K), dtype=np.int64)
    for p, t, v in zip(preds, targets, masks):
        for pi, ti, vi in zip(p.ravel(), t.ravel(), v.ravel()):
            if ti != -1 and vi:
                m[ti, pi] += 1
    total = m.sum()
    acc = np.trace(m) / total if total else math.nan
    iou = []
    for k in range(K):
        tp = m[k, k]
        fp = m[:, k].sum() - tp
        fn = m[k, :].sum() - tp
        iou.append(math.nan if tp + fp + fn == 0 else tp / (tp + fp + fn))
    defined = [v for v in iou if not math.isnan(v)]
    return m, acc, np.array(iou), (float(np.mean(defined)) if defined else math.nan)


@st.composite
def label_batches(draw):
    K = draw(st.integers(1, 5))
    n = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    seed = draw(st.integers(0, 2**31 - 1))
    use_mask = draw(st.booleans())
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        pred = rng.integers(0, K, shape)
        target = rng.integers(-1, K, shape)
        mask = rng.random(shape) < 0.8 if use_mask else np.ones(shape, bool)
        batches.append((pred, target, mask))
    return K, batches, use_mask


@given(label_batches())
def test_confusion_matrix_matches_brute_force(case):
    K, batches, use_mask = case
    cm = ConfusionMatrix(K)
    for pred, target, mask in batches:
        cm.update(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask) if use_mask else None)
    m, acc, iou, miou = brute_force(*zip(*batches), K=K)
    np.testing.assert_array_equal(cm.matrix.numpy(), m)
    np.testing.assert_allclose(cm.accuracy(), acc, equal_nan=True)
    np.testing.assert_allclose(cm.iou().numpy(), iou, equal_nan=True)
    np.testing.assert_allclose(cm.mean_iou(), miou, equal_nan=True)
    json.dumps(cm.to_dict(), allow_nan=False)  # JSON-ready: NaN becomes None


def test_absent_class_left_out_and_iou_zero_kept():
    # class 0: perfect; class 1: in the truth, never predicted right (IoU 0, kept); class 2 predicted but
    # absent from truth (IoU 0, kept); class 3: absent from both (NaN, left out)
    target = torch.tensor([[0, 0, 1, 1, -1]])
    pred = torch.tensor([[0, 0, 2, 2, 3]])  # the 3 sits on a void pixel: excluded from predictions too
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    iou = cm.iou()
    assert iou[0] == 1.0 and iou[1] == 0.0 and iou[2] == 0.0 and math.isnan(iou[3])
    assert cm.mean_iou() == pytest.approx(1 / 3)
    assert cm.accuracy() == pytest.approx(0.5)
    d = cm.to_dict(["a", "b", "c", "d"])
    assert d["iou"] == {"a": 1.0, "b": 0.0, "c": 0.0, "d": None} and d["pixels"] == 4


def test_scores_are_reduced_by_argmax_and_streaming_adds_up():
    probs = torch.softmax(torch.randn(2, 3, 4, 5), dim=1)
    target = torch.randint(-1, 3, (2, 4, 5))
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(probs, target)
    b.update(probs[:1].argmax(1), target[:1])
    b.update(probs[1:].argmax(1), target[1:])
    assert torch.equal(a.matrix, b.matrix)
    assert a.total == int((target != -1).sum())
    a.reset()
    assert a.total == 0 and math.isnan(a.accuracy()) and math.isnan(a.mean_iou())


def test_confusion_matrix_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target ids"):
        cm.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="predicted ids"):
        cm.update(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_inpainting_errors_on_masked_pixels_only():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 4, 16, 16, generator=g)
    mask = torch.rand(2, 16, 16, generator=g) < 0.3
    pred = truth + 0.1 * torch.randn(2, 4, 16, 16, generator=g)
    errs = inpainting_errors(pred, truth, mask)
    d = (pred - truth).permute(0, 2, 3, 1)[mask]  # (N, C)
    assert errs["mae"] == pytest.approx(float(d.abs().mean()), rel=1e-5)
    assert errs["rmse"] == pytest.approx(float(d.pow(2).mean().sqrt()), rel=1e-5)
    assert errs["psnr"] == pytest.approx(10 * math.log10(1 / float(d.pow(2).mean())), rel=1e-5)
    p, t = pred.permute(0, 2, 3, 1)[mask].double(), truth.permute(0, 2, 3, 1)[mask].double()
    angle = torch.rad2deg(torch.arccos((p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)))).mean()
    assert errs["spectral_angle_deg"] == pytest.approx(float(angle), rel=1e-4)
    # what lies outside the mask does not change the pixel errors
    other = torch.where(mask.unsqueeze(1), pred, torch.zeros(()))
    errs2 = inpainting_errors(other, truth, mask)
    for key in ("mae", "rmse", "psnr", "spectral_angle_deg"):
        assert errs2[key] == pytest.approx(errs[key], rel=1e-6)


def test_ssim_matches_a_brute_force_window():
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(1, 1, 9, 12, generator=g, dtype=torch.float64)
    pred = (truth + 0.2 * torch.rand(1, 1, 9, 12, generator=g, dtype=torch.float64)).clamp(0, 1)
    i, j = 2, 7
    mask = torch.zeros(1, 9, 12, dtype=torch.bool)
    mask[0, i, j] = True
    # replicate padding by 5, 11x11 Gaussian window with sigma 1.5, C1 = 0.01^2, C2 = 0.03^2
    r = np.arange(11) - 5
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    P = np.pad(pred[0, 0].numpy(), 5, mode="edge")[i : i + 11, j : j + 11]
    Tt = np.pad(truth[0, 0].numpy(), 5, mode="edge")[i : i + 11, j : j + 11]
    mp, mt = (w * P).sum(), (w * Tt).sum()
    vp, vt, cov = (w * P * P).sum() - mp**2, (w * Tt * Tt).sum() - mt**2, (w * P * Tt).sum() - mp * mt
    c1, c2 = 0.01**2, 0.03**2
    want = (2 * mp * mt + c1) * (2 * cov + c2) / ((mp**2 + mt**2 + c1) * (vp + vt + c2))
    assert inpainting_errors(pred, truth, mask)["ssim"] == pytest.approx(want, rel=1e-4)


def test_inpainting_errors_of_a_perfect_reconstruction_and_of_stacks():
    truth = torch.rand(2, 3, 5, 8, 8)
    mask = torch.rand(2, 3, 8, 8) < 0.5
    mask[0, 0, 0, 0] = True
    errs = inpainting_errors(truth.clone(), truth, mask)
    assert errs["mae"] == 0 and errs["rmse"] == 0 and errs["psnr"] == math.inf
    assert errs["ssim"] == pytest.approx(1.0) and errs["spectral_angle_deg"] == pytest.approx(0.0, abs=0.1)
    # a pure brightness change keeps the spectral angle at 0
    assert inpainting_errors(2 * truth, truth, mask)["spectral_angle_deg"] == pytest.approx(0.0, abs=0.1)


def test_inpainting_errors_reject_bad_input():
    x = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="no pixel"):
        inpainting_errors(x, x, torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask of shape"):
        inpainting_errors(x, x, torch.ones(1, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        inpainting_errors(x, x[:, :1], torch.ones(1, 4, 4, dtype=torch.bool))


# -- per-band RMSE, interval coverage, error against spread -----------------------------------------------


def test_per_band_rmse_matches_brute_force():
    rng = np.random.default_rng(0)
    for shape, mshape in (((2, 3, 5, 6), (2, 5, 6)), ((2, 2, 4, 3, 3), (2, 2, 3, 3))):
        pred, truth = rng.random(shape), rng.random(shape)
        mask = rng.random(mshape) < 0.4
        mask.flat[0] = True
        got = per_band_rmse(torch.from_numpy(pred).float(), torch.from_numpy(truth).float(), torch.from_numpy(mask))
        C = shape[-3]
        want = []
        for c in range(C):
            se = []
            for idx in np.ndindex(*mshape):
                if mask[idx]:
                    full = idx[:-2] + (c,) + idx[-2:]
                    se.append((pred[full] - truth[full]) ** 2)
            want.append(math.sqrt(sum(se) / len(se)))
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # the overall RMSE is the root of the mean of the squared per-band RMSEs (same count per band)
    p, t = torch.rand(1, 4, 6, 6), torch.rand(1, 4, 6, 6)
    m = torch.rand(1, 6, 6) < 0.5
    m[0, 0, 0] = True
    overall = math.sqrt(np.mean(np.square(per_band_rmse(p, t, m))))
    assert overall == pytest.approx(inpainting_errors(p, t, m)["rmse"], rel=1e-5)
    with pytest.raises(ValueError, match="no pixel"):
        per_band_rmse(p, t, torch.zeros(1, 6, 6, dtype=torch.bool))


def test_interval_coverage_matches_brute_force():
    rng = np.random.default_rng(1)
    K, shape = 7, (2, 3, 4, 5)
    samples = rng.normal(size=(K, *shape))
    truth = rng.normal(size=shape)
    mask = rng.random((2, 4, 5)) < 0.6
    levels = (0.5, 0.8, 0.9)
    got = interval_coverage(torch.from_numpy(samples), torch.from_numpy(truth), torch.from_numpy(mask), levels)
    for a in levels:
        inside = n = 0
        for b, c, i, j in np.ndindex(*shape):
            if mask[b, i, j]:
                v = samples[:, b, c, i, j]
                lo, hi = np.quantile(v, [(1 - a) / 2, (1 + a) / 2], method="weibull")
                inside += lo <= truth[b, c, i, j] <= hi
                n += 1
        assert got[a] == pytest.approx(inside / n)
    # temporal stacks; a truth equal to a sample at the interval's end counts as inside
    s = torch.arange(5.0).view(5, 1, 1, 1, 1, 1).expand(5, 1, 2, 1, 1, 1).clone()  # samples 0..4
    t = torch.tensor([2.0, 4.0]).view(1, 2, 1, 1, 1)  # the middle, the largest sample
    m = torch.ones(1, 2, 1, 1, dtype=torch.bool)
    # K = 5: level 4/6 spans order statistics 1..5 exactly (positions 1/6 * 6 = 1 and 5/6 * 6 = 5)
    assert interval_coverage(s, t, m, (2 / 3, 0.2)) == {2 / 3: 1.0, 0.2: 0.5}


def test_interval_coverage_rejects_bad_input():
    t = torch.rand(1, 2, 3, 3)
    m = torch.ones(1, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="samples of shape"):
        interval_coverage(torch.rand(4, 1, 2, 3, 2), t, m)
    with pytest.raises(ValueError, match="levels"):
        interval_coverage(torch.rand(4, 1, 2, 3, 3), t, m, (0.8, 1.0))
    with pytest.raises(ValueError, match="no pixel"):
        interval_coverage(torch.rand(4, 1, 2, 3, 3), t, ~m)


@settings(max_examples=20, deadline=None)
@given(level=st.floats(0.5, 0.9), K=st.integers(40, 120), seed=st.integers(0, 2**31 - 1))
def test_interval_coverage_of_samples_from_the_truths_distribution_is_the_level(level, K, seed):
    """Truth and samples drawn from the same (per-value) distribution: the coverage tends to the level."""
    g = torch.Generator().manual_seed(seed)
    shape = (4, 2, 25, 25)  # 5000 values, each with its own location and scale
    loc = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    scale = torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.01
    truth = loc + scale * torch.randn(shape, generator=g, dtype=torch.float64)
    samples = loc + scale * torch.randn((K, *shape), generator=g, dtype=torch.float64)
    mask = torch.ones(4, 25, 25, dtype=torch.bool)
    got = interval_coverage(samples, truth, mask, (level,))[level]
    assert abs(got - level) < 0.04  # sd of the share about 0.007
    # samples half as wide as they should be cover less
    narrow = loc + 0.5 * (samples - loc)
    assert interval_coverage(narrow, truth, mask, (level,))[level] < level - 0.1


def test_error_vs_spread_matches_brute_force():
    rng = np.random.default_rng(2)
    shape = (2, 3, 6, 7)
    mean, truth = rng.normal(size=shape), rng.normal(size=shape)
    std = rng.random(shape)
    std[0, :, :2] = 0.0  # ties: repeated edges leave bins empty
    mask = rng.random((2, 6, 7)) < 0.7
    bins = 6
    got = error_vs_spread(*(torch.from_numpy(v) for v in (mean, std, truth)), torch.from_numpy(mask), bins=bins)
    vals = [(std[b, c, i, j], mean[b, c, i, j] - truth[b, c, i, j])
            for b, c, i, j in np.ndindex(*shape) if mask[b, i, j]]
    s = np.array([v[0] for v in vals])
    edges = np.quantile(s, np.linspace(0, 1, bins + 1))
    want = {"std": [], "rmse": [], "count": []}
    for b in range(bins):
        last = b == bins - 1
        members = [e for sd, e in vals if edges[b] <= sd and (sd < edges[b + 1] or (last and sd <= edges[b + 1]))]
        if members:
            want["std"].append(np.mean([sd for sd, e in vals
                                        if edges[b] <= sd and (sd < edges[b + 1] or (last and sd <= edges[b + 1]))]))
            want["rmse"].append(math.sqrt(np.mean(np.square(members))))
            want["count"].append(len(members))
    assert sum(got["count"]) == len(vals) and got["count"] == want["count"]
    assert len(got["count"]) < bins  # the ties emptied a bin
    np.testing.assert_allclose(got["edges"], edges)
    np.testing.assert_allclose(got["std"], want["std"])
    np.testing.assert_allclose(got["rmse"], want["rmse"])
    with pytest.raises(ValueError, match="bins"):
        error_vs_spread(*(torch.from_numpy(v) for v in (mean, std, truth)), torch.from_numpy(mask), bins=0)


def test_error_vs_spread_of_calibrated_gaussian_predictions():
    g = torch.Generator().manual_seed(3)
    std = torch.rand(1, 2, 100, 100, generator=g) * 0.4 + 0.1
    mean = torch.zeros_like(std)
    truth = std * torch.randn(std.shape, generator=g)
    out = error_vs_spread(mean, std, truth, torch.ones(1, 100, 100, dtype=torch.bool), bins=5)
    assert len(out["rmse"]) == 5
    np.testing.assert_allclose(out["rmse"], out["std"], rtol=0.1)
