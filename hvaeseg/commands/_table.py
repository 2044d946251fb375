"""Plain-text tables for evaluation results."""

from __future__ import annotations

from typing import Any


def format_metrics(result: dict[str, Any]) -> str:
    """A readable table of an evaluation result (see :func:`hvaeseg.experiment.evaluate_run`)."""
    lines = [f"split {result.get('split', '?')}: {result.get('patches', '?')} patches"]
    head = [("accuracy", "pixel accuracy"), ("mean_iou", "mean IoU")]
    extra = [("iwae_nats_per_value", "IWAE bound (nats / observed value)"), ("consistency", "consistency"),
             ("recon_mae", "reconstruction MAE"), ("recon_rmse", "reconstruction RMSE")]
    for key, label in head + extra:
        if key in result and result[key] is not None:
            lines.append(f"  {label:<36} {result[key]:.4f}")
    per_class = result.get("iou") or {}
    if per_class:
        lines.append("  per-class IoU:")
        width = max(len(str(name)) for name in per_class)
        for name, value in per_class.items():
            shown = "   absent" if value is None else f"{value:9.4f}"
            lines.append(f"    {name:<{width}} {shown}")
    cm = result.get("confusion_matrix")
    if cm:
        names = list(per_class) if per_class else [str(i) for i in range(len(cm))]
        lines.append("  confusion matrix (rows: truth, columns: prediction):")
        short = [n[:8] for n in names]
        lines.append("    " + " " * 10 + "".join(f"{n:>10}" for n in short))
        for name, row in zip(short, cm):
            lines.append(f"    {name:<10}" + "".join(f"{v:>10}" for v in row))
    return "\n".join(lines)
