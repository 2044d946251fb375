"""Small utilities over Pyro traces, shared by the HVAE and the objectives.

Everything here works on *any* model and guide that follow the site conventions of ``docs/conventions.md``
(``model(x=None, s=None, valid=None)``, ``guide(x, s=None, valid=None)``, every per-image site under
``pyro.plate("batch", B)``), not only on :class:`hvaeseg.HVAE`:

- :func:`unwrap`, :func:`peel`, :func:`rewrap`: strip (and put back) the ``Independent`` /
  ``MaskedDistribution`` / ``ExpandedDistribution`` wrappers that ``.to_event``, ``.mask`` and plates add, to
  reach the distribution that carries the parameters (``.logits`` of the ``"s"`` site, ``.mean`` of ``"x"``).
- :func:`split_parameters`: the decoder (theta) / encoder (phi) parameter groups, derived from traces.
- :func:`site_distribution`: run a model or guide only up to one site and return that site's distribution
  (cheap access to q(s|x) without running the rest of the guide).
- :func:`replay`: like ``pyro.poutine.replay`` but also replays sites that were *observed* in the source
  trace (e.g. the guide replayed on a model trace in which ``s`` was given).
- :func:`per_image_log_prob`: the log-probability of a trace per image of the batch plate, ``(B,)``.
- :func:`labelled_log_prob`: per-image sum of per-pixel categorical log-probabilities over labelled pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyro.poutine as poutine
import torch
import torch.distributions as tdist
from pyro.distributions import Independent, MaskedDistribution
from pyro.distributions.torch_distribution import ExpandedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import Message, NonlocalExit
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "BATCH_PLATE",
    "labelled_log_prob",
    "peel",
    "per_image_log_prob",
    "replay",
    "rewrap",
    "site_distribution",
    "split_parameters",
    "unwrap",
]

#: name of the plate that indexes the images of a batch (see ``docs/conventions.md``)
BATCH_PLATE = "batch"

# A wrapper is recorded as (kind, argument): ("independent", n), ("masked", mask), ("expanded", batch_shape).
Wrapper = tuple[str, Any]


# ----------------------------------------------------------------------------------------------- wrappers
def peel(fn: tdist.Distribution | Callable[..., Any]) -> tuple[tdist.Distribution, list[Wrapper]]:
    """Strip ``Independent`` / ``MaskedDistribution`` / ``ExpandedDistribution`` wrappers.

    :param fn: a (possibly wrapped) distribution, e.g. ``Categorical(logits).to_event(2).mask(m)`` (the ``fn`` of a
        trace's sample site, which Pyro types as any callable).
    :returns: ``(base, wrappers)``; ``wrappers`` lists the stripped layers outermost first, so that
        ``rewrap(base, wrappers)`` rebuilds an equivalent distribution around ``base`` (or around a
        replacement with the same batch and event shape, e.g. a straight-through version of ``base``).
    """
    wrappers: list[Wrapper] = []
    while True:
        if isinstance(fn, tdist.Independent):
            wrappers.append(("independent", fn.reinterpreted_batch_ndims))
            fn = fn.base_dist
        elif isinstance(fn, MaskedDistribution):
            wrappers.append(("masked", fn._mask))
            fn = fn.base_dist
        elif isinstance(fn, ExpandedDistribution):
            wrappers.append(("expanded", fn.batch_shape))
            fn = fn.base_dist
        else:
            # a torch distribution; or another of Pyro's (a plate's _Subsample), which Pyro types as a callable
            return fn, wrappers  # type: ignore[return-value]


def unwrap(fn: tdist.Distribution | Callable[..., Any]) -> tdist.Distribution:
    """The innermost distribution of ``fn`` once ``Independent`` / masking / expansion wrappers are removed.

    The ``"s"`` site of a conventions-following guide unwraps to a distribution with ``.logits`` of shape
    ``(B, H, W, K)``; the ``"x"`` site of a model unwraps to one with ``.mean`` of the image's shape.
    """
    return peel(fn)[0]


def rewrap(base: tdist.Distribution, wrappers: list[Wrapper]) -> tdist.Distribution:
    """Re-apply the wrappers returned by :func:`peel` (innermost first) around ``base``."""
    fn = base
    for kind, arg in reversed(wrappers):
        if kind == "independent":
            fn = Independent(fn, arg)
        elif kind == "masked":
            fn = MaskedDistribution(fn, arg)
        elif kind == "expanded":
            fn = fn.expand(arg)
        else:  # pragma: no cover - peel only produces the kinds above
            raise AssertionError(kind)
    return fn


# -------------------------------------------------------------------------------------- parameter split
class _ParameterRecorder(TorchFunctionMode):
    """Records every ``nn.Parameter`` that enters a torch operation while active.

    A torch-function mode sees the arguments of every torch call (``F.conv2d(x, self.weight)``,
    ``self.logits.softmax(-1)``, the transform behind ``pyro.param``), so it finds the parameters a program
    really uses, whether they live in plain ``nn.Module`` s, ``PyroModule`` s or Pyro's parameter store.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, nn.Parameter] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for leaf in tree_flatten((args, kwargs))[0]:
            if isinstance(leaf, nn.Parameter) and id(leaf) not in self.seen:
                self.seen[id(leaf)] = leaf
        return func(*args, **kwargs)


def _parameters_used(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[list[Tensor], Any]:
    """Parameters used while running ``fn`` (in order of first use) and ``fn``'s Pyro trace."""
    recorder = _ParameterRecorder()
    tracer = poutine.trace(fn)
    with recorder:
        trace = tracer.get_trace(*args, **kwargs)
    found: dict[int, Tensor] = dict(recorder.seen)
    # pyro.param sites (global store or PyroParams): the unconstrained leaf is the optimised parameter
    for site in trace.nodes.values():
        if site["type"] != "param":
            continue
        value = site["value"]
        if value is None:
            continue
        leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
        # Pyro's global parameter store holds plain leaf tensors (requires_grad), not nn.Parameters
        if torch.is_tensor(leaf) and leaf.is_leaf and leaf.requires_grad and id(leaf) not in found:
            found[id(leaf)] = leaf
    return list(found.values()), trace


def split_parameters(
    model: Callable[..., Any], guide: Callable[..., Any], *args: Any, **kwargs: Any
) -> tuple[list[Tensor], list[Tensor]]:
    """Decoder (theta) and encoder (phi) parameter groups, derived from one run of the guide and the model.

    The guide is run on ``(*args, **kwargs)`` and the model is run on the same arguments, replayed on the
    guide's samples (so a model whose ``s`` prior cannot be sampled still runs). A parameter belongs to the
    decoder when the model uses it; to the encoder when only the guide uses it (a guide that reuses the
    decoder's prior logits, as the ladder guide of the HVAE does, therefore leaves those shared parameters
    in the decoder group). "Uses" means: it is an argument of some torch operation while the program runs,
    or it is the value of a ``pyro.param`` site of the trace. Parameters used by neither program are in
    neither group. Both runs are made under ``torch.no_grad()``.

    :param model: ``model(x=None, s=None, valid=None)``-like callable.
    :param guide: ``guide(x, s=None, valid=None)``-like callable.
    :param args: example arguments, typically a small batch ``x, s=..., valid=...``.
    :returns: ``(decoder_params, encoder_params)``, disjoint lists: the ``nn.Parameter`` s in order of first
        use, then the unconstrained leaf tensors of ``pyro.param`` sites (Pyro's global parameter store holds
        plain leaf tensors, not ``nn.Parameter`` s) not already listed.
    """
    with torch.no_grad():
        guide_params, guide_trace = _parameters_used(guide, *args, **kwargs)
        model_params, _ = _parameters_used(poutine.replay(model, trace=guide_trace), *args, **kwargs)
    decoder_ids = {id(p) for p in model_params}
    encoder = [p for p in guide_params if id(p) not in decoder_ids]
    return model_params, encoder


# ------------------------------------------------------------------------------------------ site access
def site_distribution(fn: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` up to its sample site ``name`` and return that site's distribution (as the trace would
    record it, i.e. after plates have broadcast it). Nothing after the site runs, so for a guide this costs
    the bottom-up pass and the ``s`` head only. Gradients flow as usual (wrap in ``torch.no_grad()`` if none
    are wanted).

    :raises ValueError: when ``fn`` finishes without reaching a sample site called ``name``.
    """
    escaping = poutine.escape(fn, escape_fn=lambda msg: msg["type"] == "sample" and msg["name"] == name)
    try:
        escaping(*args, **kwargs)
    except NonlocalExit as exit_:
        exit_.reset_stack()
        return exit_.site["fn"]
    raise ValueError(
        f"expected a sample site named {name!r} in {getattr(fn, '__name__', fn)!r}, got none; "
        "see docs/conventions.md for the site names objectives rely on"
    )


class _ReplayValues(Messenger):
    def __init__(self, values: dict[str, Tensor]) -> None:
        super().__init__()
        self.values = values

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["name"] not in self.values:
            return
        msg["value"] = self.values[msg["name"]]
        msg["done"] = True


def replay(fn: Callable[..., Any], trace: Any = None, *, values: dict[str, Tensor] | None = None) -> Callable[..., Any]:
    """``fn`` with its latent sample sites set to the values of ``trace`` (or of the dict ``values``).

    Unlike ``pyro.poutine.replay``, a site that was *observed* in ``trace`` is replayed too (its value is
    the observation): the sleep phase replays the guide on a model trace in which ``s`` was given. Sites
    observed in ``fn`` itself keep their observation; sites of ``fn`` missing from the trace are sampled.
    """
    if values is None:
        if trace is None:
            raise ValueError("expected a trace or values to replay, got neither")
        values = {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}
    return _ReplayValues(values)(fn)


def _batch_dim(site: dict[str, Any]) -> int | None:
    for frame in site["cond_indep_stack"]:
        if frame.name == BATCH_PLATE and frame.vectorized:
            return frame.dim
    return None


def per_image_log_prob(
    trace: Any,
    batch_size: int,
    *,
    exclude: Iterable[str] = (),
    include_observed: bool = True,
    site_filter: Callable[[str, Any], bool] | None = None,
) -> Tensor:
    """Sum of the trace's site log-probabilities per image of the ``"batch"`` plate.

    :param trace: a Pyro trace (``compute_log_prob`` is called on it; masks and scales are applied).
    :param batch_size: ``B``, the size of the batch plate.
    :param exclude: site names left out of the sum.
    :param include_observed: whether observed sites count.
    :param site_filter: optional ``(name, site) -> bool``: only sites where it is true count.
    :returns: ``(B,)`` tensor (zeros when no site counts).
    :raises ValueError: when a site with a non-zero log-probability is not under a plate named ``"batch"``
        (its log-probability cannot be attributed to one image).
    """
    excluded = set(exclude)

    def counts(name: str, site: Message) -> bool:
        if site["type"] != "sample" or site_is_subsample(site) or name in excluded:
            return False
        if site["is_observed"] and not include_observed:
            return False
        return site_filter is None or bool(site_filter(name, site))

    trace.compute_log_prob(site_filter=counts)
    total: Tensor | None = None
    for name, site in trace.nodes.items():
        if not counts(name, site):
            continue
        lp = site["log_prob"]
        dim = _batch_dim(site)
        if dim is None:
            if torch.is_tensor(lp) and lp.numel() == 1 and float(lp) == 0.0:
                continue
            raise ValueError(
                f"expected site {name!r} under pyro.plate({BATCH_PLATE!r}, B), got a site outside it; "
                "per-image quantities need every site inside the batch plate (docs/conventions.md)"
            )
        if not torch.is_tensor(lp):
            lp = torch.as_tensor(lp, device=site["value"].device if torch.is_tensor(site["value"]) else None)
        if lp.dim() < -dim:
            lp = lp.reshape((1,) * (-dim - lp.dim()) + lp.shape)
        lp = lp.movedim(dim, 0)
        lp = lp.expand((batch_size,) + lp.shape[1:]).reshape(batch_size, -1).sum(-1)
        total = lp if total is None else total + lp
    if total is None:
        device = next(
            (site["value"].device for site in trace.nodes.values() if torch.is_tensor(site.get("value"))), None
        )
        return torch.zeros(batch_size, device=device)
    return total


# --------------------------------------------------------------------------------- labelled pixels of s
def labelled_log_prob(logits: Tensor, s: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-image sum of ``log softmax(logits)[s]`` over pixels where ``mask`` (default: ``s >= 0``) holds.

    :param logits: ``(B, H, W, K)`` (or any ``(B, ..., K)``) per-pixel class logits, e.g. the unwrapped
        ``"s"`` site of a guide.
    :param s: ``(B, H, W)`` int64 class ids, ``-1`` = void.
    :param mask: optional bool mask of the pixels to count (must also exclude void pixels).
    :returns: ``(B,)``.
    """
    if logits.shape[:-1] != s.shape:
        raise ValueError(
            f"expected logits of shape s.shape + (K,) = {tuple(s.shape)} + (K,), got {tuple(logits.shape)}"
        )
    if mask is None:
        mask = s >= 0
    log_q = torch.log_softmax(logits, dim=-1).gather(-1, s.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    log_q = torch.where(mask, log_q, torch.zeros((), dtype=log_q.dtype, device=log_q.device))
    return log_q.reshape(s.shape[0], -1).sum(-1)
