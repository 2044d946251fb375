import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.metrics import ConfusionMatrix, inpainting_errors


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
