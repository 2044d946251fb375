"""``HVAE``: a :class:`HierarchySpec` as a Pyro model and ladder guide (site names per docs/conventions.md).

Generative model, top-down (``z0 = (s, l)``, layers in topological order, then ``x``)::

    s   ~ pi(s)                       empirical (no density) or factorised categorical, (B, H, W)
    l   ~ Bernoulli(1/2)^D            (B, D)                      temporal: (B, T, D)
    z_t ~ p(z_t | parents)            (B, C_t, H/r_t, W/r_t)      temporal: (B, T, C_t, ...)
    x   ~ Normal(loc, scale)          (B, C, H, W), masked by valid  temporal: (B, T, C, H, W)

With the image's ``cov_rank > 0`` a pixel's bands are correlated: ``x ~ BandCorrelatedNormal(loc, scale,
factor)``, covariance ``diag(scale^2) + F F^T`` per pixel with the ``(C, r)`` factor F from the decoder.

With the ``interp`` covariate among the image's parents (temporal only), ``loc`` is the leave-one-out
interpolation of each date from the stack's other clear dates plus the decoder's correction
(:mod:`hvaeseg.hierarchy.interpolation`): the density of a date given the others' observations, so the model's
``log p`` is a pseudo-likelihood over the dates (each date conditioned on the rest). Generating takes the
observations to interpolate from ``interp_from=(x, valid)``; without them every date is generated from the latents
alone (the covariate says "no clear neighbour"), which is what the symmetric objective's sleep images are. In
training mode each date's covariate is hidden with probability ``spec.image.interp_dropout`` (like dropout), so
the decoder also learns that case.

Guide (ladder): one bottom-up U-Net pass over ``(x * valid, valid)``; q(s|x) from the U-Net's head,
q(l|x) from the pooled coarsest features, and q(z_t | z_<t, x) with parameters = decoder prior
parameters of z_t (theta, shared) + encoder head on the bottom-up features at z_t's resolution (phi).

Shapes in temporal models: the batch plate is at ``dim=-2`` and per-date sites are under
``pyro.plate("time", T, dim=-1)``; ``s`` is outside the time plate, so its site value is ``(B, 1, H, W)``
(labels ``(B, H, W)`` given by the caller are unsqueezed) and the guide's q(s|x) logits ``(B, 1, H, W, K)``.

The model and guide are plain Pyro callables, so Pyro's own tools apply (docs/conventions.md, "Pyro
inference"): ``SVI`` with ``Trace_ELBO`` / ``TraceGraph_ELBO``, ``Predictive``, ``poutine.condition`` /
``poutine.do``. With the empirical s prior those that draw ``s`` from the prior (``Predictive`` always does:
Pyro runs the model alone once to find its plates) need label maps to draw from:
``hvae.attach_label_pool(pool)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions import Normal
from pyro.nn import PyroModule
from torch.distributions import Bernoulli, kl_divergence

from hvaeseg.distributions import (
    BandCorrelatedNormal,
    EmpiricalPrior,
    FastBernoulli,
    FastCategorical,
    PartiallyObservedCategorical,
    bernoulli_kl,
    check_label_pool,
    constant_gaussian_log_prob,
)
from hvaeseg.hierarchy.interpolation import interpolation_input, without_visibility
from hvaeseg.hierarchy.networks import LATENT_MIN_SCALE, Decoder, LadderEncoder, parent_input
from hvaeseg.hierarchy.posterior import posterior_inpaint
from hvaeseg.hierarchy.spec import HierarchySpec, LatentLayerSpec
from hvaeseg.nets.covariates import doy_features

__all__ = ["HVAE"]


def _shape_str(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


#: prefix of the HVAE's parameters in Pyro's parameter store (as ``pyro.module("hvae", ...)`` would name them)
PARAM_PREFIX = "hvae"


def _collecting_parameters() -> bool:
    """Whether a ``poutine.trace(param_only=True)`` is on the effect-handler stack: how ``pyro.infer.SVI`` finds
    the parameters to step. hvaeseg's own training takes the parameters from the modules instead."""
    from pyro.poutine.runtime import _PYRO_STACK

    return any(getattr(handler, "param_only", False) for handler in _PYRO_STACK)


class LabelMapSource(Protocol):
    """Anything that lists its label maps, e.g. :class:`hvaeseg.objectives.LabelPool` (every map with every
    dihedral transform)."""

    def all_maps(self) -> torch.Tensor:  # (N, H, W) integer class ids, -1 = void
        ...


class HVAE(PyroModule):
    """Hierarchical VAE whose top latent is the segmentation ``s``.

    :param spec: the hierarchy (see :class:`~hvaeseg.hierarchy.spec.HierarchySpec`).

    Networks: ``self.decoder`` (:class:`~hvaeseg.hierarchy.networks.Decoder`, theta) and
    ``self.encoder`` (:class:`~hvaeseg.hierarchy.networks.LadderEncoder`, phi; ``self.encoder.unet`` is a
    :class:`~hvaeseg.nets.SegmentationUNet`). :meth:`parameter_groups` derives the two groups from traces.

    With the empirical s prior, :meth:`attach_label_pool` gives the prior label maps to draw ``s`` from, so that
    the model can also be run with ``s`` unobserved (prior samples, :class:`pyro.infer.Predictive`).
    """

    def __init__(self, spec: HierarchySpec):
        if not isinstance(spec, HierarchySpec):
            raise TypeError(f"expected a HierarchySpec, got {type(spec).__name__}")
        super().__init__()
        self.spec = spec
        self.decoder = Decoder(spec)
        self.encoder = LadderEncoder(spec)
        self._layers: dict[str, LatentLayerSpec] = {layer.name: layer for layer in spec.layers}
        # dtype / device anchor that follows .to(); not a parameter, so reading it uses no parameter
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        # label maps the empirical s prior draws from: not a buffer (not saved with the weights, not moved by .to())
        self._label_pool: torch.Tensor | None = None

    def _expose_parameters(self, *modules: str) -> None:
        """Under ``pyro.infer.SVI`` only: record the parameters of ``modules`` (``"decoder"``, ``"encoder"``) as
        ``pyro.param`` sites named ``hvae$$$<module>.<name>``, so that SVI's optimiser steps them.

        The store entries are (re)pointed at this model's own parameter tensors first, so another HVAE run through
        SVI in the same process never hands its tensors to this one. Elsewhere (hvaeseg's objectives, the traces
        that split decoder and encoder parameters) nothing is recorded and nothing is put in the store.
        """
        if not _collecting_parameters():
            return
        store = pyro.get_param_store()
        for module in modules:
            for name, param in getattr(self, module).named_parameters(prefix=module):
                if param.requires_grad:
                    full = f"{PARAM_PREFIX}$$${name}"
                    store[full] = param
                    pyro.param(full)

    # ----------------------------------------------------------------------------------- label pool
    def attach_label_pool(self, pool: torch.Tensor | LabelMapSource | None) -> HVAE:
        """Give the empirical s prior label maps to draw from (``None`` detaches them); returns ``self``.

        Samples of ``s`` are then ``H x W`` crops of these maps, void pixels replaced by draws from the pool's
        class frequencies (:func:`hvaeseg.distributions.sample_label_maps`). The prior's ``log_prob`` stays 0,
        so training is unchanged. The maps are kept by reference (not copied, not saved in ``state_dict``);
        samples are put on the model's device. The categorical s prior ignores them.

        :param pool: ``(N, H, W)`` (or ``(H, W)``) integer class ids in ``[0, K)``, ``-1`` = void, or a
            :class:`~hvaeseg.objectives.LabelPool` (all its maps with their dihedral transforms), or ``None``.
        :raises TypeError: for float maps or an object without ``all_maps()``.
        :raises ValueError: for class ids outside ``[-1, K)``, maps that are not ``(N, H, W)``, or only void.
        """
        if pool is None:
            self._label_pool = None
            return self
        if not isinstance(pool, torch.Tensor):
            if not callable(getattr(pool, "all_maps", None)):
                raise TypeError(
                    f"expected a label pool as (N, H, W) label maps or a LabelPool, got {type(pool).__name__}"
                )
            pool = pool.all_maps()
        self._label_pool = check_label_pool(pool, self.spec.num_classes)
        return self

    @property
    def label_pool(self) -> torch.Tensor | None:
        """The attached label maps ``(N, H, W)`` (see :meth:`attach_label_pool`), or None."""
        return self._label_pool

    # --------------------------------------------------------------------------------------- helpers
    @property
    def _dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def _device(self) -> torch.device:
        return self._anchor.device

    def _dims(self, x, s, valid, shape) -> tuple[int, int | None, int, int]:
        """``(B, T, H, W)`` from whichever of x / valid / s / shape is given (T is None unless temporal)."""
        spec = self.spec
        temporal = spec.temporal
        if x is not None:
            want = 5 if temporal else 4
            if x.dim() != want or x.shape[-3] != spec.image.bands:
                layout = "(B, T, C, H, W)" if temporal else "(B, C, H, W)"
                raise ValueError(f"expected x of shape {layout} with C={spec.image.bands}, got {_shape_str(x)}")
            B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
            T = x.shape[1] if temporal else None
        elif valid is not None:
            B, H, W = valid.shape[0], valid.shape[-2], valid.shape[-1]
            T = valid.shape[1] if temporal else None
        elif s is not None:
            B, H, W = s.shape[0], s.shape[-2 - s.is_floating_point()], s.shape[-1 - s.is_floating_point()]
            T = None
            if temporal:
                T = int(shape[1]) if shape is not None else 1
        elif shape is not None:
            shape = tuple(int(v) for v in shape)
            if len(shape) != (4 if temporal else 3):
                layout = "(B, T, H, W)" if temporal else "(B, H, W)"
                raise ValueError(f"expected shape={layout}, got {shape}")
            B, H, W = shape[0], shape[-2], shape[-1]
            T = shape[1] if temporal else None
        else:
            raise ValueError("expected at least one of x, s, valid or shape=(B, H, W) to size the batch")
        if valid is not None:
            want_shape = (B, T, H, W) if temporal else (B, H, W)
            if tuple(valid.shape) != want_shape or valid.dtype != torch.bool:
                raise ValueError(f"expected valid of shape {want_shape} (bool), got {valid.dtype} {_shape_str(valid)}")
        if s is not None:
            hw = tuple(s.shape[1:3]) if s.dim() in (3, 4) else None
            ok = (s.dim() == 3 and not s.is_floating_point()) or (s.dim() == 4 and s.is_floating_point())
            if temporal:  # also accept the site layout (B, 1, H, W[, K])
                ok = ok or (s.shape[1:2] == (1,) and s.dim() - s.is_floating_point() == 4)
                if ok and s.dim() - s.is_floating_point() == 4:
                    hw = tuple(s.shape[2:4])
            if not ok or s.shape[0] != B or hw != (H, W):
                raise ValueError(
                    f"expected s of shape {(B, H, W)} (int64 class ids, -1 = void) or {(B, H, W)} + (K,) "
                    f"(one-hot float), got {_shape_str(s)}"
                )
        spec.check_patch(H, W)
        return B, T, H, W

    def _doy_input(self, doy: torch.Tensor | None, B: int, T: int | None) -> torch.Tensor | None:
        """The day-of-year features ``(B[, T], F)`` the decoder nets take, or None when no layer uses ``doy``."""
        if not self.spec.day_of_year:
            return None
        want = (B,) if T is None else (B, T)
        if doy is None or tuple(doy.shape) != want:
            raise ValueError(
                f"this hierarchy is conditioned on the day of the year ('doy' is a parent): expected doy of shape "
                f"{want} (one per image{' and date' if T is not None else ''}), got {_shape_str(doy)}"
            )
        return doy_features(doy, self._dtype)

    def _interp_input(
        self,
        x: torch.Tensor | None,
        valid: torch.Tensor | None,
        doy: torch.Tensor | None,
        interp_from: tuple[torch.Tensor, torch.Tensor | None] | torch.Tensor | None,
        B: int,
        T: int | None,
        H: int,
        W: int,
        dropout: bool = True,
    ) -> torch.Tensor | None:
        """The ``interp`` covariate ``(B, T, channels, H, W)`` from ``interp_from`` (a stack ``(x, valid)``, or the
        covariate itself, :meth:`interp_covariate`'s) or else the observed stack (zeros, "no clear neighbour", when
        neither is given), or None when the image does not take it. In training mode, with ``dropout``, each
        ``(b, t)`` is zeroed with probability ``spec.image.interp_dropout``."""
        spec = self.spec
        drop = self._interp_dropout if dropout else (lambda v: v)
        if not spec.interpolates:
            return None
        assert T is not None  # the spec checks that interp is only in temporal hierarchies
        if isinstance(interp_from, torch.Tensor):
            want = (B, T, spec.input_channels("interp"), H, W)
            if tuple(interp_from.shape) != want:
                raise ValueError(f"expected the interp covariate given as interp_from of shape {want} "
                                 f"(HVAE.interp_covariate), got {_shape_str(interp_from)}")
            return drop(interp_from.to(self._dtype))
        if interp_from is not None:
            src, src_valid = interp_from
            where = "interp_from"
        elif x is not None:
            src, src_valid = x, valid
            where = "x"
        else:
            channels = spec.input_channels("interp")
            return torch.zeros((B, T, channels, H, W), dtype=self._dtype, device=self._device)
        want = (B, T, spec.image.bands, H, W)
        if tuple(src.shape) != want:
            raise ValueError(f"expected {where} of shape {want} to interpolate from, got {_shape_str(src)}")
        if src_valid is None:
            src_valid = torch.ones((B, T, H, W), dtype=torch.bool, device=src.device)
        elif tuple(src_valid.shape) != (B, T, H, W) or src_valid.dtype != torch.bool:
            raise ValueError(
                f"expected the valid mask of {where} as bool {(B, T, H, W)}, got {src_valid.dtype} "
                f"{_shape_str(src_valid)}"
            )
        if doy is None or tuple(doy.shape) != (B, T):
            raise ValueError(
                f"this hierarchy interpolates between the dates of a stack ('interp' is a parent of the image), "
                f"which needs their days of the year: expected doy of shape {(B, T)}, got {_shape_str(doy)}"
            )
        return drop(interpolation_input(src, src_valid, doy, self._dtype, spec.image.transfer))

    def _interp_dropout(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` with each ``(b, t)`` zeroed with probability ``spec.image.interp_dropout`` in training mode."""
        p = self.spec.image.interp_dropout
        if self.training and p > 0:
            keep = torch.rand(out.shape[:2], device=out.device) >= p
            out = out * keep[:, :, None, None, None].to(out.dtype)
        return out

    def interp_covariate(self, x: torch.Tensor, valid: torch.Tensor, doy: torch.Tensor) -> torch.Tensor:
        """The ``interp`` covariate of a stack, ``(B, T, channels, H, W)``, to pass as ``interp_from=`` when the
        same stack is filled many times (:func:`~hvaeseg.hierarchy.posterior.posterior_inpaint` computes it once
        for all its samples: with ``image.transfer`` it costs more than a pass of the nets).

        :param x: ``(B, T, C, H, W)``; :param valid: ``(B, T, H, W)`` bool; :param doy: ``(B, T)``.
        :raises ValueError: the hierarchy's image does not take ``interp``.
        """
        if not self.spec.interpolates:
            raise ValueError("this hierarchy's image does not take the interp covariate (no 'interp' parent)")
        if x.dim() != 5:
            raise ValueError(f"expected x of shape (B, T, C, H, W), got {_shape_str(x)}")
        B, T, _, H, W = x.shape
        out = self._interp_input(x, valid, doy, (x, valid), B, T, H, W, dropout=False)
        assert out is not None
        return out

    def _covariate_inputs(self, x, valid, doy, interp_from, B: int, T: int | None, H: int, W: int) -> dict:
        """The observed parents of the decoder nets: ``"doy"`` (:meth:`_doy_input`) and ``"interp"``
        (:meth:`_interp_input`), each only when the hierarchy takes it."""
        inputs: dict[str, torch.Tensor] = {}
        doy_in = self._doy_input(doy, B, T)
        if doy_in is not None:
            inputs["doy"] = doy_in
        interp = self._interp_input(x, valid, doy, interp_from, B, T, H, W)
        if interp is not None:
            inputs["interp"] = interp
        return inputs

    def _s_site_value(self, s: torch.Tensor | None) -> torch.Tensor | None:
        """Labels as the s site stores them: int64 (or one-hot float), ``(B, 1, ...)`` when temporal."""
        if s is None:
            return None
        if not s.is_floating_point() and s.dtype != torch.int64:
            s = s.long()
        if self.spec.temporal and s.dim() - s.is_floating_point() == 3:
            s = s.unsqueeze(1)
        return s

    def _time_plate(self, T: int | None):
        return pyro.plate("time", T, dim=-1) if T is not None else contextlib.nullcontext()

    def _layer_dist(self, layer: LatentLayerSpec, out: torch.Tensor):
        """The distribution of a layer's site from its (prior or posterior) parameters ``(B[, T], P, h, w)``."""
        if layer.family == "bernoulli":
            return FastBernoulli(out)
        if layer.family == "categorical":
            return FastCategorical(out.unflatten(-3, (layer.channels, layer.categories)).movedim(-3, -1))
        loc, raw = out.chunk(2, dim=-3)
        return Normal(loc, LATENT_MIN_SCALE + F.softplus(raw), validate_args=False)

    def _prior_out(
        self, name: str, inputs: dict, H: int, W: int, B: int, T: int | None, shared: bool = False
    ) -> torch.Tensor:
        r = self._layers[name].resolution if name != "x" else 1
        out = self.decoder.net_output(name, inputs, (H // r, W // r))
        if T is not None and out.shape[1] != T and not shared:  # parents shared by all dates (e.g. only s)
            out = out.expand(B, T, *out.shape[2:])
        return out

    def _image_params(
        self, inputs: dict, net_output: Callable[[dict], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loc, scale, factor)`` of p(x | parents) (:meth:`Decoder.x_params`) from ``net_output(inputs)``, the
        image net's output, with the ``interp`` covariate's bands added to ``loc`` (a residual to interpolation).

        With ``transfer.seen`` only the spread (scale and band factors) sees the visibility channel: the mean is
        that of a blind fill, the net run a second time with the channel at 0. Observed pixels then teach the mean
        of hidden ones, and hidden pixels (``wake_holdout``) their own spread."""
        loc, scale, factor = self.decoder.x_params(net_output(inputs))
        interp = inputs.get("interp")
        if interp is None:
            return loc, scale, factor
        transfer = self.spec.image.transfer
        if transfer is not None and transfer.seen:
            loc = self.decoder.x_params(net_output(dict(inputs, interp=without_visibility(interp))))[0]
        return loc + interp[..., : self.spec.image.bands, :, :], scale, factor

    def _s_prior(self, B: int, T: int | None, H: int, W: int):
        batch = (B, 1, H, W) if T is not None else (B, H, W)
        if self.spec.s_prior == "empirical":
            return EmpiricalPrior(self.spec.num_classes, batch, self._label_pool, device=self._device)
        return FastCategorical(self.decoder.s_logits.expand(*batch, self.spec.num_classes))

    # ------------------------------------------------------------------------------------ model
    def model(
        self,
        x: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        *,
        doy: torch.Tensor | None = None,
        shape: Sequence[int] | None = None,
        interp_from: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """p(s) p(l) prod_t p(z_t | parents) p(x | parents), observing ``x`` (where ``valid``) and ``s`` if given.

        :param x: ``(B, C, H, W)`` float (temporal ``(B, T, C, H, W)``), or ``None`` to generate.
        :param s: ``(B, H, W)`` int64 labels (``-1`` = void, marginalised) or one-hot float ``(B, H, W, K)``.
            With the empirical prior, ``s`` must be given or replayed from a guide trace, or a label pool
            attached (:meth:`attach_label_pool`) to draw it from.
        :param valid: ``(B, H, W)`` bool (temporal ``(B, T, H, W)``); invalid pixels of ``x`` do not count.
        :param doy: ``(B,)`` (temporal ``(B, T)``) days of the year; required when the hierarchy uses ``doy``.
        :param shape: ``(B, H, W)`` (temporal ``(B, T, H, W)``) when none of x, s, valid is given, or the
            number of dates T when only ``s`` is.
        :param interp_from: ``(x, valid)`` of a real stack, ``(B, T, C, H, W)`` and ``(B, T, H, W)``, to compute
            the ``interp`` covariate from (hierarchies whose image takes it; default: the observed ``x`` and
            ``valid``; with neither, "no clear neighbour"). Ignored by the others.
        :return: the value of the ``"x"`` site.
        """
        spec = self.spec
        B, T, H, W = self._dims(x, s, valid, shape)
        self._expose_parameters("decoder")
        dtype = self._dtype
        inputs = self._covariate_inputs(x, valid, doy, interp_from, B, T, H, W)
        with pyro.plate("batch", B, dim=-2 if T is not None else -1):
            s_val = pyro.sample("s", self._s_prior(B, T, H, W).to_event(2), obs=self._s_site_value(s))
            inputs["s"] = parent_input(spec, "s", s_val, dtype)
            for name in spec.shared_order:  # (B, 1, C, h, w): one value per pixel for every date
                out = self._prior_out(name, inputs, H, W, B, T, shared=True)
                z = pyro.sample(name, self._layer_dist(self._layers[name], out).to_event(3))
                inputs[name] = parent_input(spec, name, z, dtype)
            with self._time_plate(T):
                l_shape = (B, T, spec.code_bits) if T is not None else (B, spec.code_bits)
                half = torch.zeros((), dtype=dtype, device=self._device).expand(l_shape)
                inputs["l"] = pyro.sample("l", FastBernoulli(half).to_event(1))
                for name in spec.per_date_order:
                    out = self._prior_out(name, inputs, H, W, B, T)
                    z = pyro.sample(name, self._layer_dist(self._layers[name], out).to_event(3))
                    inputs[name] = parent_input(spec, name, z, dtype)
                loc, scale, factor = self._image_params(inputs, lambda i: self._prior_out("x", i, H, W, B, T))
                if factor is not None:  # bands correlated within a pixel
                    return pyro.sample("x", BandCorrelatedNormal(loc, scale, factor, valid), obs=x)
                fn = Normal(loc, scale, validate_args=False)
                if valid is not None:
                    fn = fn.mask(valid.unsqueeze(-3))
                return pyro.sample("x", fn.to_event(3), obs=x)

    # ------------------------------------------------------------------------- the exact s posterior
    def class_log_likelihood(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, *, doy: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p(x_i | s_i = k)`` for every pixel ``i`` and class ``k``: ``(B, H, W, K)``, summed over the dates
        of a temporal stack (``s`` is shared by them); invalid pixels (dates) contribute 0.

        Only for hierarchies where the image depends on ``s`` pixel by pixel and on nothing latent besides
        (:attr:`HierarchySpec.exact_s`): then ``p(s | x)`` is ``softmax(log pi + class_log_likelihood)`` pixel by
        pixel, and ``log p(x)`` its log-normaliser summed over the pixels, exactly (``l`` is not a parent of the
        image, so it marginalises to 1). The image net is run on constant class maps: at one pixel when the image has
        no map-valued covariate (every class in one pass, the classes stacked along the batch, and the densities
        computed from parameters constant over the pixels, :func:`~hvaeseg.distributions.constant_gaussian_log_prob`),
        else (``interp``) at full size, class by class.

        :param x: ``(B, C, H, W)`` (temporal ``(B, T, C, H, W)``).
        :param valid: ``(B, H, W)`` (temporal ``(B, T, H, W)``) bool, or None (every pixel).
        :param doy: ``(B,)`` (temporal ``(B, T)``) days of the year, when the image takes ``doy``.
        :raises ValueError: when the hierarchy's posterior of ``s`` is not exact (the message says why).
        """
        spec = self.spec
        problem = spec.exact_s_problem
        if problem is not None:
            raise ValueError(f"the posterior of s is not exact in this hierarchy: {problem}")
        B, T, H, W = self._dims(x, None, valid, None)
        inputs = self._covariate_inputs(x, valid, doy, None, B, T, H, W)
        K = spec.num_classes
        eye = torch.eye(K, dtype=self._dtype, device=self._device)
        if "interp" in inputs:  # parameters at full size: class by class
            per_class = []
            for k in range(K):
                loc, scale, factor = self._class_image_params(inputs, eye[k].expand(B, K), T, (H, W))
                per_class.append(BandCorrelatedNormal(loc, scale, factor).pixel_log_prob(x) if factor is not None
                                 else Normal(loc, scale, validate_args=False).log_prob(x).sum(-3))
            lp = torch.stack(per_class)
        else:  # one pixel's parameters per image and class, every class in one pass: row k * B + b is image b, class k
            stacked = {name: value.repeat(K, *([1] * (value.dim() - 1))) for name, value in inputs.items()}
            loc, scale, factor = self._class_image_params(stacked, eye.repeat_interleave(B, 0), T, (1, 1))
            rows = (K, B, *loc.shape[1:-2])  # (K, B[, T], C) from (K B[, T], C, 1, 1)
            loc = loc.reshape(rows)
            scale = scale.reshape(rows) if scale.dim() > 3 else scale.reshape(-1)  # per class, or (C, 1, 1) per band
            factor = None if factor is None else factor.reshape(*rows, -1)  # (K, B[, T], C, r): channel c r + j
            lp = constant_gaussian_log_prob(x, loc, scale, factor)
        if valid is not None:  # lp: (K, B[, T], H, W)
            lp = torch.where(valid, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
        return (lp.sum(2) if T is not None else lp).movedim(0, -1)

    def _class_image_params(
        self, inputs: dict, onehot: torch.Tensor, T: int | None, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(loc, scale, factor)`` of the image (:meth:`_image_params`) at ``size`` under the constant class maps
        ``onehot`` ``(R, K)``, with the covariates ``inputs`` given for the same ``R`` rows."""
        s = onehot[..., None, None].expand(*onehot.shape, *size)
        inputs = dict(inputs, s=s.unsqueeze(1) if T is not None else s)
        return self._image_params(inputs, lambda i: self.decoder.net_output("x", i, size))

    def s_prior_logits(self) -> torch.Tensor:
        """``log pi``: the categorical s prior's normalised log-probabilities ``(K,)``.

        :raises ValueError: with the empirical prior (no density)."""
        if self.decoder.s_logits is None:
            raise ValueError("the empirical s prior has no density: set s_prior: categorical in the HierarchySpec")
        return torch.log_softmax(self.decoder.s_logits, -1)

    def s_posterior_logits(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, *, doy: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log pi_k + log p(x_i | s_i = k)``, ``(B, H, W, K)``: the exact posterior's logits (softmax over the
        last dim gives ``p(s_i = k | x)``), for hierarchies with :attr:`HierarchySpec.exact_s`; arguments as in
        :meth:`class_log_likelihood`."""
        return self.s_prior_logits() + self.class_log_likelihood(x, valid, doy=doy)

    # ------------------------------------------------------------------------------------ guide
    def guide(
        self,
        x: torch.Tensor,
        s: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        *,
        doy: torch.Tensor | None = None,
        encoded: tuple[torch.Tensor, dict[int, torch.Tensor]] | None = None,
        **_unused,
    ) -> None:
        """q(s|x) q(l|x) prod_t q(z_t | z_<t, x) (ladder), from ``(x * valid, valid)``.

        With ``s`` given, labelled pixels keep their label and void pixels (``-1``) are sampled; the ``"s"``
        site's log-probability then counts the void pixels only. ``encoded``: :meth:`encode`'s output for these
        ``(x, valid, doy)``, when many samples are drawn for one batch (the encoder's U-Net then runs once). Extra
        keyword arguments of the model (``shape``) are accepted and ignored.
        """
        spec = self.spec
        B, T, H, W = self._dims(x, s, valid, None)
        self._expose_parameters("encoder", "decoder")  # the ladder guide uses the decoder's prior nets too
        dtype = self._dtype
        doy_in = self._doy_input(doy, B, T)
        logits, feats = encoded if encoded is not None else self.encode(x, valid, doy)
        logits = logits.movedim(1, -1)  # (B, H, W, K)
        if T is not None:
            logits = logits.unsqueeze(1)
        inputs: dict[str, torch.Tensor] = {} if doy_in is None else {"doy": doy_in}
        with pyro.plate("batch", B, dim=-2 if T is not None else -1):
            s_obs = self._s_site_value(s)
            if s_obs is not None and s_obs.is_floating_point():
                raise ValueError("expected s as int64 labels (-1 = void) in the guide, got a float tensor")
            q_s = FastCategorical(logits) if s_obs is None else PartiallyObservedCategorical(logits, s_obs)
            inputs["s"] = parent_input(spec, "s", pyro.sample("s", q_s.to_event(2)), dtype)
            for name in spec.shared_order:  # q(z | x_1..T): per-date features pooled over the clear dates
                r = self._layers[name].resolution
                head = self.encoder.head(name, feats, valid, shared=True)
                out = self.decoder.net_output(name, inputs, (H // r, W // r)) + head
                z = pyro.sample(name, self._layer_dist(self._layers[name], out).to_event(3))
                inputs[name] = parent_input(spec, name, z, dtype)
            with self._time_plate(T):
                inputs["l"] = pyro.sample("l", FastBernoulli(self.encoder.l_logits(feats, valid)).to_event(1))
                for name in spec.per_date_order:
                    r = self._layers[name].resolution
                    out = self.decoder.net_output(name, inputs, (H // r, W // r)) + self.encoder.head(name, feats)
                    z = pyro.sample(name, self._layer_dist(self._layers[name], out).to_event(3))
                    inputs[name] = parent_input(spec, name, z, dtype)

    def encode(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, doy: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The guide's deterministic part, the encoder U-Net on ``(x, valid[, doy])``: ``(logits, features)``
        as :meth:`guide` takes them (``encoded=``). ``logits``: ``(B, K, H, W)`` (q(s|x)'s); ``features``:
        ``{factor: (B[, T], C_f, H/f, W/f)}``, the U-Net's bottom-up maps (temporal: per date)."""
        B, T, _, _ = self._dims(x, None, valid, None)
        uses_doy = self._doy_input(doy, B, T) is not None
        return self.encoder.unet.forward_features(x, valid, doy if uses_doy else None)

    # ---------------------------------------------------------------------------------- methods
    def parameter_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """``(decoder_params, encoder_params)``: parameters the model uses / only the guide uses.

        Derived from one tiny trace of the guide and the model replayed on it
        (:func:`hvaeseg.traces.split_parameters`), never hard-coded.
        """
        from hvaeseg.traces import split_parameters

        spec = self.spec
        side = spec.patch_size or spec.network.factors[-1]
        lead = (1, 1) if spec.temporal else (1,)
        x = torch.zeros(*lead, spec.image.bands, side, side, dtype=self._dtype, device=self._device)
        valid = torch.ones(*lead, side, side, dtype=torch.bool, device=self._device)
        kwargs = {"doy": torch.ones(lead, dtype=self._dtype, device=self._device)} if spec.needs_doy else {}
        decoder, encoder = split_parameters(self.model, self.guide, x, valid=valid, **kwargs)
        # every parameter the HVAE uses is one of its modules' nn.Parameters: outside SVI it records no pyro.param
        # sites, and under SVI those sites hold the same nn.Parameters (_expose_parameters)
        return cast("list[torch.nn.Parameter]", decoder), cast("list[torch.nn.Parameter]", encoder)

    @torch.no_grad()
    def sample_prior(
        self,
        n: int | None = None,
        s: torch.Tensor | None = None,
        size: int | Sequence[int] | None = None,
        *,
        dates: int = 1,
        doy: torch.Tensor | None = None,
        interp_from: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Draw ``(s, l, z..., x)`` from the model (no gradient).

        :param n: number of samples (default: the batch of ``s``; a batch of one ``s`` is repeated ``n``
            times).
        :param s: ``(B, H, W)`` label maps to condition on (with the empirical prior: required unless a label
            pool is attached, see :meth:`attach_label_pool`).
        :param size: image side or ``(H, W)`` when ``s`` is not given.
        :param dates: T for temporal hierarchies.
        :param doy: ``(n,)`` (temporal ``(n, T)``) days of the year, for hierarchies that use ``doy``.
        :param interp_from: ``(x, valid)`` of real stacks to interpolate from, for hierarchies whose image takes
            ``interp`` (see :meth:`model`).
        :return: site name -> value (``"x"``: ``(n, C, H, W)``, temporal ``(n, T, C, H, W)``).
        """
        spec = self.spec
        if s is not None:
            if n is not None and s.shape[0] != n:
                if s.shape[0] != 1:
                    raise ValueError(f"expected n equal to the batch of s ({s.shape[0]}) or s with batch 1, got n={n}")
                s = s.expand(n, *s.shape[1:])
            shape: tuple[int, ...] | None = (s.shape[0], dates) if spec.temporal else None
        else:
            if spec.s_prior == "empirical" and self._label_pool is None:
                raise ValueError(
                    "the empirical s prior has no sampler without a label pool: give s (label maps, e.g. from a "
                    "label pool) to sample_prior, attach a pool (hvae.attach_label_pool(pool)), or use "
                    "s_prior='categorical' in the HierarchySpec"
                )
            if n is None or size is None:
                raise ValueError("expected n and size (image side or (H, W)) when s is not given")
            h, w = (size, size) if isinstance(size, int) else tuple(size)
            shape = (n, dates, h, w) if spec.temporal else (n, h, w)
        trace = poutine.trace(self.model).get_trace(None, s, None, shape=shape, doy=doy, interp_from=interp_from)
        out: dict[str, torch.Tensor] = {}
        for name in spec.site_names:
            value = trace.nodes[name]["value"]
            assert value is not None  # a sampled site (Pyro types site values Optional)
            out[name] = value
        if spec.temporal:
            out["s"] = out["s"].squeeze(1)
        return out

    @torch.no_grad()
    def reconstruct(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        doy: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder mean of x given one posterior sample ``(s, l, z) ~ q(.|x)``: the shape of ``x``."""
        from hvaeseg.traces import unwrap

        B, T, H, W = self._dims(x, s, valid, None)
        shape = (B, H, W) if T is None else (B, T, H, W)
        guide_trace = poutine.trace(self.guide).get_trace(x, s, valid, doy=doy)
        trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
            None, None, valid, shape=shape, doy=doy, interp_from=(x, valid)
        )

        return unwrap(trace.nodes["x"]["fn"]).mean

    @torch.no_grad()
    def segment(
        self, x: torch.Tensor, valid: torch.Tensor | None = None, doy: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class probabilities q(s|x): ``(B, K, H, W)``."""
        B, T, _, _ = self._dims(x, None, valid, None)
        use = self._doy_input(doy, B, T) is not None
        return torch.softmax(self.encoder.unet(x, valid, doy if use else None), dim=1)

    def inpaint(
        self, x: torch.Tensor, valid: torch.Tensor, num_samples: int = 8, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, std, samples)`` of x given its valid pixels; see
        :func:`hvaeseg.hierarchy.posterior.posterior_inpaint` (also :func:`hvaeseg.inpaint.posterior_inpaint`)."""
        return posterior_inpaint(self, x, valid, num_samples, **kwargs)

    @torch.no_grad()
    def layer_statistics(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
        doy: torch.Tensor | None = None,
    ) -> dict[str, dict[str, float]]:
        """Rate per latent site: KL(q || p) given the same parents, so a collapsed layer is visible.

        For each of ``"s"`` (categorical prior only; with the empirical prior its ``"entropy"`` is reported),
        ``"l"`` and every layer: ``"kl"`` (nats per image, mean over the batch), ``"kl_per_dim"`` (nats per
        latent variable) and ``"active"`` (fraction of latent variables whose batch-mean KL exceeds 0.01
        nats; near 0 means the layer has collapsed onto its prior).
        """
        from hvaeseg.traces import unwrap

        guide_trace = poutine.trace(self.guide).get_trace(x, s, valid, doy=doy)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(x, None, valid, doy=doy)
        B = x.shape[0]
        stats: dict[str, dict[str, float]] = {}
        for name in ("s", "l") + self.spec.order:
            q = unwrap(guide_trace.nodes[name]["fn"])
            p = unwrap(model_trace.nodes[name]["fn"])
            if isinstance(p, EmpiricalPrior):
                lq = q.logits  # type: ignore[attr-defined]  # the guide's s: a categorical (has .logits)
                ent = -(lq.exp() * lq).sum(-1).reshape(B, -1)
                stats[name] = {"entropy": float(ent.sum(-1).mean()), "entropy_per_dim": float(ent.mean())}
                continue
            kl = _kl(q, p)  # per latent variable, shape (B, ...)
            kl = kl.reshape(B, -1)
            stats[name] = {
                "kl": float(kl.sum(-1).mean()),
                "kl_per_dim": float(kl.mean()),
                "active": float((kl.mean(0) > 0.01).float().mean()),
            }
        return stats


def _kl(q, p) -> torch.Tensor:
    """Elementwise KL(q || p) of a site's guide and model distributions (Bernoulli, categorical, Normal):
    :func:`torch.distributions.kl_divergence`, whose closed forms cover these families and their subclasses
    (:class:`~hvaeseg.distributions.FastBernoulli`, :class:`~hvaeseg.distributions.FastCategorical`), except
    Bernoulli pairs, which :func:`~hvaeseg.distributions.bernoulli_kl` computes from the logits (torch's form
    goes through the probabilities and returns ``inf`` once a logit saturates them to exactly 0 or 1)."""
    if isinstance(q, Bernoulli) and isinstance(p, Bernoulli):
        return bernoulli_kl(q.logits, p.logits)
    try:
        return kl_divergence(q, p)
    except NotImplementedError:  # pragma: no cover
        raise TypeError(f"no closed-form KL for {type(q).__name__} vs {type(p).__name__}") from None

