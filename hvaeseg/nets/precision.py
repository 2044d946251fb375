"""Numerical precision of training and prediction: ``"fp32"`` (the default) or ``"bf16"`` (mixed).

``"bf16"`` runs the convolutions and linear layers in bfloat16 under :func:`torch.autocast` and stores the
networks' weights channels-last (NHWC), the layout oneDNN (CPU) and cuDNN (GPU) run fastest. Everything else
stays float32: the weights themselves and the optimiser state (autocast casts a copy per call), the networks'
outputs (every network of :mod:`hvaeseg.nets` returns float32, so distribution parameters, log-probabilities
and losses are float32), the backward pass's accumulation into the float32 weights. bfloat16 has float32's
exponent range, so no loss scaling is needed.

It pays only on hardware with bfloat16 units: NVIDIA GPUs from Ampere on, and CPUs with AVX512-BF16 or AMX
(Intel Sapphire Rapids and later, AMD Zen 4 and later). Elsewhere bfloat16 is emulated and slower than
float32, so :func:`check_precision` refuses it. Measured on this project's CPU machines (one thread, batch 8
of 32 x 32 patches, ``bench/precision.py``): see that script's docstring for the figures.

``"fp32"`` changes nothing: no autocast region, the default memory layout, bit-for-bit the results of a run
made before this option existed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["PRECISIONS", "autocast", "bf16_supported", "check_precision", "prepare_modules"]

#: the precisions a run can train and predict in
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` has bfloat16 arithmetic units (not emulation)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise :class:`ValueError`, naming the fix, for an unknown precision or bf16 on a device without it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not bf16_supported(device):
        raise ValueError(
            f"precision bf16: the device {str(device)!r} has no bfloat16 units (CPUs need AVX512-BF16 or AMX, "
            "GPUs Ampere or later), so bf16 would be emulated and slower: use --precision fp32"
        )


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context to compute a forward pass in: :func:`torch.autocast` to bfloat16 for ``"bf16"``, nothing for
    ``"fp32"``. Take gradients outside it (as PyTorch recommends)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def prepare_modules(modules: Iterable[nn.Module], precision: str) -> None:
    """Store the weights of ``modules`` channels-last for ``"bf16"`` (in place; values unchanged). Nothing for
    ``"fp32"``. Only the layout of 4-d weights changes; state dicts load either way."""
    if precision == "bf16":
        for module in modules:
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted at run time; not in torch's stubs

