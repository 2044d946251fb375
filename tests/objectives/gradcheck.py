"""Monte Carlo gradient checks against exact gradients (shared by the objective tests).

Tolerance: ``|mean - exact| <= Z * se + ATOL`` coordinate-wise, where ``mean`` and ``se`` (standard error)
come from ``R`` independent repetitions of the estimator (each itself an average over many particles).
With Z = 4 a correct estimator fails a coordinate with probability about 1e-4 (t distribution, R - 1
degrees of freedom); the seeds are fixed, so the outcome is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Z = 4.0
ATOL = 1e-5


def flat_grad(value: Tensor, params: Sequence[Tensor]) -> Tensor:
    grads = torch.autograd.grad(value, list(params), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def mc_gradients(estimate: Callable[[], Tensor], params: Sequence[Tensor], repeats: int) -> Tensor:
    """(repeats, n) gradients of ``estimate()`` (a scalar to maximise) w.r.t. ``params``."""
    return torch.stack([flat_grad(estimate(), params) for _ in range(repeats)])


def check(samples: Tensor, exact: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, se, z) and an assertion that every coordinate is within tolerance."""
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    z = (mean - exact).abs() / se.clamp(min=1e-12)
    bad = (mean - exact).abs() > Z * se + ATOL
    assert not bad.any(), (
        f"MC gradient differs from the exact one at {bad.nonzero().flatten().tolist()}: "
        f"mean={mean[bad].tolist()} exact={exact[bad].tolist()} se={se[bad].tolist()}"
    )
    # the check has power: the standard errors are small next to the gradient itself
    assert se.max() < 0.05 * exact.abs().max(), f"too noisy to be informative: max se {se.max():.3g}"
    return mean, se, z
