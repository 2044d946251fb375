"""Helpers shared by the objectives: batch parsing, particles, the ``"s"`` site contract."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, overload

import torch
from torch import Tensor

from hvaeseg.distributions import EmpiricalPrior
from hvaeseg.traces import unwrap

NO_CLOSED_FORM_S_PRIOR = (
    "needs a closed-form s prior: set s_prior='categorical' in the HierarchySpec (the model's 's' site has "
    "the empirical prior, which has no density)"
)


class Labelled(NamedTuple):
    x: Tensor
    s: Tensor
    valid: Tensor | None
    doy: Tensor | None = None

    @property
    def kwargs(self) -> dict[str, Tensor]:
        return covariates(self.doy)


class Unlabelled(NamedTuple):
    x: Tensor
    valid: Tensor | None
    doy: Tensor | None = None

    @property
    def kwargs(self) -> dict[str, Tensor]:
        return covariates(self.doy)


def check_probability(value: Any, name: str) -> float:
    """``value`` as a float if it is a probability in ``[0, 1]`` (a bool is not); else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def check_weight(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite number >= 0 (a bool is not); else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"expected {name} as a finite number >= 0, got {value!r}")
    return float(value)


def covariates(doy: Tensor | None) -> dict[str, Tensor]:
    """The covariate keywords of a model / guide call: ``{"doy": doy}``, or none when the day of the year is
    unknown (so models without covariates are called exactly as before)."""
    return {} if doy is None else {"doy": doy}


def as_labelled(batch: Any) -> Labelled | None:
    """``(x, s, valid[, doy])`` from a tuple or a ``PatchBatch``-like object (``.x``, ``.valid``, ``.labels``,
    ``.doy``)."""
    if batch is None:
        return None
    doy = None
    if hasattr(batch, "x") and hasattr(batch, "labels"):
        x, s, valid, doy = batch.x, batch.labels, getattr(batch, "valid", None), getattr(batch, "doy", None)
    else:
        try:
            x, s, valid, *rest = batch
            if len(rest) > 1:
                raise ValueError
            doy = rest[0] if rest else None
        except (TypeError, ValueError):
            raise TypeError(
                f"expected labelled=(x, s, valid) or a PatchBatch, got {type(batch).__name__}"
            ) from None
    _check_x(x, "labelled")
    check_labels(s, x.shape[0], "labelled")
    _check_valid(valid, x, "labelled")
    if not bool((s >= 0).any()):
        raise ValueError("expected a labelled batch with at least one labelled pixel, got only void (-1)")
    return Labelled(x, s.long(), valid, doy)


def as_unlabelled(batch: Any) -> Unlabelled | None:
    """``(x, valid[, doy])`` from a tuple or a ``PatchBatch``-like object (its labels are ignored)."""
    if batch is None:
        return None
    doy = None
    if hasattr(batch, "x"):
        x, valid, doy = batch.x, getattr(batch, "valid", None), getattr(batch, "doy", None)
    else:
        try:
            x, valid, *rest = batch
            if len(rest) > 1:
                raise ValueError
            doy = rest[0] if rest else None
        except (TypeError, ValueError):
            raise TypeError(
                f"expected unlabelled=(x, valid) or a PatchBatch, got {type(batch).__name__}"
            ) from None
    _check_x(x, "unlabelled")
    _check_valid(valid, x, "unlabelled")
    return Unlabelled(x, valid, doy)


def _check_x(x: Any, what: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"expected {what} x as a float tensor (B, C, H, W), got {got}")


def _check_valid(valid: Any, x: Tensor, what: str) -> None:
    if valid is None:
        return
    if not isinstance(valid, Tensor) or valid.shape[0] != x.shape[0]:
        got = tuple(valid.shape) if isinstance(valid, Tensor) else type(valid).__name__
        raise ValueError(f"expected {what} valid as a bool tensor with batch size {x.shape[0]}, got {got}")


def check_labels(s: Any, batch_size: int | None, what: str) -> None:
    if not isinstance(s, Tensor) or s.is_floating_point() or s.dtype == torch.bool or s.dim() < 2:
        got = f"{s.dtype} {tuple(s.shape)}" if isinstance(s, Tensor) else type(s).__name__
        raise TypeError(f"expected {what} label maps as an int64 tensor (B, H, W) with -1 = void, got {got}")
    if batch_size is not None and s.shape[0] != batch_size:
        raise ValueError(f"expected {what} label maps with batch size {batch_size}, got {tuple(s.shape)}")
    if bool((s < -1).any()):
        raise ValueError(f"expected {what} class ids >= 0 or -1 (void), got values below -1")


@overload
def repeat(t: Tensor, times: int) -> Tensor: ...
@overload
def repeat(t: None, times: int) -> None: ...
@overload
def repeat(t: Tensor | None, times: int) -> Tensor | None: ...
def repeat(t: Tensor | None, times: int) -> Tensor | None:
    """``t`` repeated ``times`` times along the batch dim (particle-major): one particle per copy.

    Exact because every site is under the batch plate: the copies of an image are independent draws.
    """
    if t is None or times == 1:
        return t
    return t.repeat((times,) + (1,) * (t.dim() - 1))


def all_valid_like(template: Tensor | None, batch_size: int) -> Tensor | None:
    """All-True mask of shape ``(batch_size,) + template.shape[1:]`` (fully observed generated images)."""
    if template is None:
        return None
    return torch.ones((batch_size,) + tuple(template.shape[1:]), dtype=torch.bool, device=template.device)


def valid_from_x(x: Tensor) -> Tensor | None:
    """All-True valid mask for images ``(B, C, H, W)`` or ``(B, T, C, H, W)``: ``x.shape[:-3] + (H, W)``."""
    if x.dim() < 4:
        return None
    return torch.ones(x.shape[:-3] + x.shape[-2:], dtype=torch.bool, device=x.device)


def s_value(trace: Any, what: str) -> Tensor:
    """The value of the ``"s"`` site of a trace, with a conventions error when there is none."""
    if "s" not in trace.nodes or trace.nodes["s"]["type"] != "sample":
        raise ValueError(
            f"expected a sample site named 's' in the {what} (docs/conventions.md), got sites "
            f"{[n for n, site in trace.nodes.items() if site['type'] == 'sample']}"
        )
    return trace.nodes["s"]["value"]


def squeeze_time(t: Tensor, s_shape: torch.Size | tuple[int, ...], event_dims: int = 0) -> Tensor:
    """Drop the singleton time dim of a temporal model's ``"s"`` site (``(B, 1, H, W[, K])``) so that it
    lines up with label maps ``(B, H, W)``; other shapes are returned unchanged."""
    if t.dim() == len(s_shape) + 1 + event_dims and t.shape[1] == 1 and t.shape[0] == s_shape[0]:
        return t.squeeze(1)
    return t


def s_logits(fn: Any, s_shape: torch.Size | tuple[int, ...]) -> Tensor:
    """``.logits`` ``(B, H, W, K)`` of the guide's unwrapped ``"s"`` distribution, checked (a temporal
    guide's ``(B, 1, H, W, K)`` is accepted and squeezed)."""
    base = unwrap(fn)
    logits = getattr(base, "logits", None)
    if isinstance(logits, Tensor):
        logits = squeeze_time(logits, tuple(s_shape), event_dims=1)
    if not isinstance(logits, Tensor) or tuple(logits.shape[:-1]) != tuple(s_shape):
        got = tuple(logits.shape) if isinstance(logits, Tensor) else f"{type(base).__name__} without .logits"
        raise ValueError(
            f"expected the guide's 's' site to unwrap to a distribution with .logits of shape "
            f"{tuple(s_shape)} + (K,) (docs/conventions.md), got {got}"
        )
    return logits


def is_empirical(fn: Any) -> bool:
    return isinstance(unwrap(fn), EmpiricalPrior)
