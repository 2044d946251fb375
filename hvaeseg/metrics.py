"""Segmentation and inpainting metrics.

Segmentation (the protocol: ``docs/protocols.md``, "Segmentation"): pixel accuracy and IoU from a streaming
confusion matrix. Void pixels (label -1) are excluded from both the prediction and the truth. A class absent from
both the truth and the predictions over everything seen has an undefined IoU (NaN) and is left out of the mean; a
class that is present but never predicted correctly has IoU 0 and is kept.

Inpainting (the protocol: ``docs/protocols.md``, "Inpainting"): errors of a reconstruction on the masked
(occluded) pixels only (:func:`inpainting_errors`, :func:`per_band_rmse`), and the calibration of posterior
samples there: the share of true values inside the central sample intervals (:func:`interval_coverage`) and the
error of the mean against the predicted spread (:func:`error_vs_spread`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ConfusionMatrix", "error_vs_spread", "inpainting_errors", "interval_coverage", "per_band_rmse",
           "quantile_weibull"]


class ConfusionMatrix:
    """A streaming ``K x K`` confusion matrix: rows are the truth, columns the prediction.

    Counts live on the device of the first :meth:`update` (int64, accumulated with ``torch.bincount``),
    so evaluation never copies maps to the host.

    :param num_classes: number of classes ``K``.

    Example::

        cm = ConfusionMatrix(3)
        cm.update(probs, labels)          # probs (B, K, H, W) or predicted ids (B, H, W)
        cm.accuracy(), cm.mean_iou(), cm.to_dict(["water", "forest", "crop"])
    """

    def __init__(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"expected num_classes to be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.matrix: Tensor = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.matrix = torch.zeros_like(self.matrix)

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        """Add a batch.

        :param pred: predicted class ids with the shape of ``target`` (integer, in ``[0, K)``), or scores /
            probabilities ``(B, K, ...)`` for ``target`` ``(B, ...)``, reduced by argmax over dim 1.
        :param target: true class ids, ``-1`` = void (excluded from both prediction and truth).
        :param valid: optional bool mask with the shape of ``target``; pixels where it is False are excluded too.
        """
        K = self.num_classes
        if pred.dim() == target.dim() + 1:
            if pred.shape[:1] != target.shape[:1] or pred.shape[2:] != target.shape[1:] or pred.shape[1] != K:
                raise ValueError(
                    f"expected scores of shape (B, {K}, ...) matching target {tuple(target.shape)}, "
                    f"got {tuple(pred.shape)}"
                )
            pred = pred.argmax(dim=1)
        elif pred.shape != target.shape:
            raise ValueError(
                f"expected pred with the shape of target {tuple(target.shape)} (class ids) or with a class "
                f"dim at 1 (scores), got {tuple(pred.shape)}"
            )
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError(f"expected integer class ids, got pred {pred.dtype} and target {target.dtype}")
        keep = target != -1
        if valid is not None:
            if valid.shape != target.shape:
                raise ValueError(f"expected valid of shape {tuple(target.shape)}, got {tuple(valid.shape)}")
            keep = keep & valid.to(device=target.device, dtype=torch.bool)
        pred = pred.to(target.device)
        t = target[keep].long()
        p = pred[keep].long()
        if t.numel():
            if int(t.min()) < 0 or int(t.max()) >= K:
                raise ValueError(
                    f"expected target ids in [0, {K}) or -1 (void), got range [{int(t.min())}, {int(t.max())}]"
                )
            if int(p.min()) < 0 or int(p.max()) >= K:
                raise ValueError(f"expected predicted ids in [0, {K}), got range [{int(p.min())}, {int(p.max())}]")
        counts = torch.bincount(t * K + p, minlength=K * K).view(K, K)
        if self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
        self.matrix += counts

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another rank) to this one; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {other.num_classes}")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    @property
    def total(self) -> int:
        """Number of (non-void, valid) pixels counted."""
        return int(self.matrix.sum())

    def accuracy(self) -> float:
        """Pixel accuracy; NaN when nothing was counted."""
        total = self.total
        return float(self.matrix.diagonal().sum()) / total if total else math.nan

    def iou(self) -> Tensor:
        """Per-class IoU ``(K,)`` float64 on the host: TP / (TP + FP + FN); NaN for a class absent from both
        the truth and the predictions."""
        m = self.matrix.double().cpu()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        out = torch.full_like(tp, math.nan)
        present = union > 0
        out[present] = tp[present] / union[present]
        return out

    def mean_iou(self) -> float:
        """Mean of the defined per-class IoUs (absent classes left out, IoU 0 kept); NaN if none is defined."""
        iou = self.iou()
        defined = iou[~iou.isnan()]
        return float(defined.mean()) if defined.numel() else math.nan

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        """JSON-ready summary: ``accuracy``, ``mean_iou``, ``iou`` by class name (None where undefined),
        ``pixels`` and the ``confusion_matrix`` (rows = truth)."""
        if class_names is None:
            class_names = [str(k) for k in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"expected {self.num_classes} class names, got {len(class_names)}")

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {
            "accuracy": clean(self.accuracy()),
            "mean_iou": clean(self.mean_iou()),
            "iou": {name: clean(float(v)) for name, v in zip(class_names, self.iou())},
            "pixels": self.total,
            "confusion_matrix": self.matrix.cpu().tolist(),
        }


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, size, size)


def _ssim_map(pred: Tensor, truth: Tensor, data_range: float, size: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-pixel SSIM of ``(N, H, W)`` images (replicate padding, so the map has the input's size)."""
    window = _gaussian_window(size, sigma, pred.device, pred.dtype)
    pad = size // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t[:, None], (pad, pad, pad, pad), mode="replicate"), window)[:, 0]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_p, mu_t = blur(pred), blur(truth)
    var_p = blur(pred * pred) - mu_p**2
    var_t = blur(truth * truth) - mu_t**2
    cov = blur(pred * truth) - mu_p * mu_t
    return ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))


def inpainting_errors(pred: Tensor, truth: Tensor, mask: Tensor, data_range: float = 1.0) -> dict[str, float]:
    """Reconstruction errors on the masked pixels only.

    :param pred: reconstruction ``(B, C, H, W)`` or ``(B, T, C, H, W)`` (C = bands), in the units of ``truth``
        (reflectance for the design's evaluation).
    :param truth: the true values, same shape.
    :param mask: bool ``(B, H, W)`` or ``(B, T, H, W)``: True where a pixel is evaluated (occluded), all bands.
    :param data_range: the value range ``L`` used by PSNR and the SSIM constants (1.0 for reflectance).
    :returns: ``mae``, ``rmse`` (over every band of every masked pixel), ``psnr`` = 10 log10(L^2 / MSE) in dB,
        ``ssim`` and ``spectral_angle_deg``, as floats.

    SSIM (Wang et al., 2004) is computed per image and band with an 11 x 11 Gaussian window (sigma 1.5),
    replicate padding at the borders, constants ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``; the local
    statistics use the whole window (observed neighbours included) and the SSIM map is averaged over the
    masked pixels only. The spectral angle is ``arccos(<p, t> / (|p| |t|))`` per masked pixel over the bands,
    in degrees, averaged (90 degrees where either spectrum is zero).

    Raises ``ValueError`` when the mask selects no pixel.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"expected pred and truth of the same shape, got {tuple(pred.shape)} and {tuple(truth.shape)}")
    if pred.dim() not in (4, 5):
        raise ValueError(f"expected (B, C, H, W) or (B, T, C, H, W) tensors, got shape {tuple(pred.shape)}")
    pixel_shape = pred.shape[:-3] + pred.shape[-2:]
    if mask.shape != pixel_shape:
        raise ValueError(
            f"expected mask of shape {tuple(pixel_shape)} (pred without the band dim), got {tuple(mask.shape)}"
        )
    mask = mask.to(device=pred.device, dtype=torch.bool)
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the mask selects no pixel: nothing to evaluate")
    pred = pred.float()
    truth = truth.float()
    C, H, W = pred.shape[-3:]
    band_mask = mask.unsqueeze(-3).expand_as(pred)  # (..., C, H, W)

    diff = (pred - truth)[band_mask]
    mae = diff.abs().mean()
    mse = (diff * diff).mean()
    psnr = 10 * torch.log10(data_range**2 / mse) if mse > 0 else torch.tensor(math.inf)

    ssim = _ssim_map(pred.reshape(-1, H, W), truth.reshape(-1, H, W), data_range).reshape(pred.shape)[band_mask].mean()

    dot = (pred * truth).sum(-3)
    norms = pred.norm(dim=-3) * truth.norm(dim=-3)
    cos = (dot / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)
    angle = torch.rad2deg(torch.arccos(cos))[mask].mean()

    return {
        "mae": float(mae),
        "rmse": float(mse.sqrt()),
        "psnr": float(psnr),
        "ssim": float(ssim),
        "spectral_angle_deg": float(angle),
    }


def _masked_values(mask: Tensor, *tensors: Tensor) -> list[Tensor]:
    """The values of ``(..., C, H, W)`` tensors at the masked pixels (every band): 1-D, in the same order."""
    ref = tensors[0]
    if ref.dim() not in (4, 5):
        raise ValueError(f"expected (B, C, H, W) or (B, T, C, H, W) tensors, got shape {tuple(ref.shape)}")
    for t in tensors[1:]:
        if t.shape != ref.shape:
            raise ValueError(f"expected tensors of the same shape, got {tuple(ref.shape)} and {tuple(t.shape)}")
    pixel_shape = ref.shape[:-3] + ref.shape[-2:]
    if mask.shape != pixel_shape:
        raise ValueError(
            f"expected mask of shape {tuple(pixel_shape)} (the values without the band dim), got {tuple(mask.shape)}"
        )
    band_mask = mask.to(device=ref.device, dtype=torch.bool).unsqueeze(-3).expand_as(ref)
    if not bool(band_mask.any()):
        raise ValueError("the mask selects no pixel: nothing to evaluate")
    return [t[band_mask] for t in tensors]


def per_band_rmse(pred: Tensor, truth: Tensor, mask: Tensor) -> list[float]:
    """Root mean squared error of each band over the masked pixels.

    :param pred: ``(B, C, H, W)`` or ``(B, T, C, H, W)`` (C = bands), in the units of ``truth``.
    :param truth: same shape.
    :param mask: bool ``(B, H, W)`` or ``(B, T, H, W)``: True where a pixel is evaluated, all bands.
    :returns: ``C`` floats, band by band.

    Raises ``ValueError`` when the mask selects no pixel.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"expected pred and truth of the same shape, got {tuple(pred.shape)} and {tuple(truth.shape)}")
    _masked_values(mask, pred)  # checks shapes and that something is selected
    mask = mask.to(device=pred.device, dtype=torch.bool)
    err = (pred.double() - truth.double()).movedim(-3, 0)  # (C, ..., H, W)
    return [float(e[mask].pow(2).mean().sqrt()) for e in err]


def quantile_weibull(sorted_samples: Tensor, p: float) -> Tensor:
    """Sample quantile ``p`` of each column of ``sorted_samples (K, N)`` (sorted along dim 0) at the plotting
    position ``p (K + 1)`` (Hyndman and Fan type 6, numpy's ``method="weibull"``), interpolated linearly between
    order statistics and clamped to the smallest and largest sample."""
    K = sorted_samples.shape[0]
    h = min(max(p * (K + 1), 1.0), float(K))  # 1-based position
    j = int(math.floor(h))
    frac = h - j
    lo = sorted_samples[j - 1]
    if frac == 0 or j >= K:
        return lo
    return lo + frac * (sorted_samples[j] - lo)


def interval_coverage(
    samples: Tensor, truth: Tensor, mask: Tensor, levels: Sequence[float] = (0.8, 0.9)
) -> dict[float, float]:
    """The share of true values inside the central sample interval of each level, over the masked pixels.

    For a value with samples ``x_1 .. x_K`` the central interval of level ``a`` runs from the sample quantile
    ``(1 - a) / 2`` to the quantile ``(1 + a) / 2`` (ends included). Quantiles are taken at the plotting
    position ``p (K + 1)`` between order statistics (numpy's ``method="weibull"``): if the truth and the samples
    are exchangeable (the samples come from the truth's own distribution), the expected coverage of the
    interval between order statistics ``i < j`` is ``(j - i) / (K + 1)``, so the expected coverage is the level
    whenever the positions fall inside ``[1, K]``, i.e. for ``K >= 2 / (1 - a) - 1`` (19 samples for 90%, 39
    for 95%); with fewer samples the interval is clamped to the sample range and covers at most
    ``(K - 1) / (K + 1)``.

    :param samples: ``(K, *truth.shape)`` samples (e.g. of posterior inpainting), in the units of ``truth``.
    :param truth: ``(B, C, H, W)`` or ``(B, T, C, H, W)`` (C = bands).
    :param mask: bool ``(B, H, W)`` or ``(B, T, H, W)``: True where a pixel is evaluated, all bands.
    :param levels: nominal levels in ``(0, 1)``.
    :returns: ``{level: observed share}``.

    Raises ``ValueError`` for bad shapes or levels, and when the mask selects no pixel.
    """
    if samples.dim() != truth.dim() + 1 or samples.shape[1:] != truth.shape or samples.shape[0] < 1:
        raise ValueError(
            f"expected samples of shape (K, *truth.shape) = (K, {', '.join(map(str, truth.shape))}), "
            f"got {tuple(samples.shape)}"
        )
    levels = [float(a) for a in levels]
    if not levels or any(not 0 < a < 1 for a in levels):
        raise ValueError(f"expected levels in (0, 1), got {levels}")
    (t,) = _masked_values(mask, truth)
    band_mask = mask.to(device=truth.device, dtype=torch.bool).unsqueeze(-3).expand_as(truth)
    s = samples[:, band_mask].double().sort(dim=0).values  # (K, N)
    t = t.double()
    out = {}
    for a in levels:
        lo, hi = quantile_weibull(s, (1 - a) / 2), quantile_weibull(s, (1 + a) / 2)
        out[a] = float(((t >= lo) & (t <= hi)).double().mean())
    return out


def _quantiles_linear(sorted_values: Tensor, ps: Tensor) -> Tensor:
    """Quantiles of a sorted 1-D tensor at probabilities ``ps``, linear between order statistics (numpy's
    default, ``torch.quantile``'s too; computed here because ``torch.quantile`` refuses very large inputs)."""
    n = sorted_values.numel()
    pos = ps.to(sorted_values.dtype) * (n - 1)
    j = pos.floor().long().clamp(0, n - 1)
    k = (j + 1).clamp(max=n - 1)
    frac = pos - j.to(pos.dtype)
    return sorted_values[j] + frac * (sorted_values[k] - sorted_values[j])


def error_vs_spread(mean: Tensor, std: Tensor, truth: Tensor, mask: Tensor, bins: int = 10) -> dict[str, list]:
    """The error of a predicted mean against its predicted spread: the RMSE of ``mean`` in bins of ``std``.

    The masked values (every band of every masked pixel) are binned by their predicted ``std`` into ``bins``
    bins of (about) equal counts: the bin edges are the quantiles ``0, 1/bins, .., 1`` of ``std`` over these
    values (linear interpolation, numpy's default) and a value falls in bin ``b`` when
    ``edge_b <= std < edge_(b+1)`` (the last bin includes its upper edge). Bins left empty (repeated edges, e.g.
    many equal spreads) are dropped. For calibrated Gaussian predictions the RMSE of a bin is about its spread.

    :param mean: ``(B, C, H, W)`` or ``(B, T, C, H, W)`` predicted mean, in the units of ``truth``.
    :param std: the predicted standard deviation, same shape and units.
    :param truth: same shape.
    :param mask: bool ``(B, H, W)`` or ``(B, T, H, W)``: True where a pixel is evaluated, all bands.
    :param bins: number of bins (>= 1).
    :returns: ``{"std": mean std of each bin, "rmse": RMSE of the mean in each bin, "count": values per bin,
        "edges": the bins + 1 edges}`` (lists, non-empty bins only, except ``edges``).

    Raises ``ValueError`` for bad shapes or ``bins``, and when the mask selects no pixel.
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"expected bins to be a positive int, got {bins!r}")
    m, s, t = (v.double() for v in _masked_values(mask, mean, std, truth))
    edges = _quantiles_linear(s.sort().values, torch.linspace(0, 1, bins + 1, dtype=torch.float64))
    which = torch.bucketize(s, edges[1:-1], right=True)  # edge_b <= s < edge_(b+1); the max lands in the last
    sq = (m - t) ** 2
    out: dict[str, list] = {"std": [], "rmse": [], "count": [], "edges": [float(e) for e in edges]}
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        if n:
            out["std"].append(float(s[sel].mean()))
            out["rmse"].append(float(sq[sel].mean().sqrt()))
            out["count"].append(n)
    return out
