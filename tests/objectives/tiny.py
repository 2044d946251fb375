"""A tiny hierarchical model and ladder guide that follow ``docs/conventions.md`` and can be enumerated.

Sites (all under ``pyro.plate("batch", B)``):

- ``"s"``: ``(B, H, W)`` label map, K classes, prior factorised categorical with learned per-pixel logits
  (``s_prior="categorical"``) or :class:`hvaeseg.distributions.EmpiricalPrior` (``"empirical"``);
- ``"l"``: ``(B, D)`` Bernoulli(1/2) global code;
- ``"z"``: ``(B, 1, H, W)`` Bernoulli feature map, logits from (s, l);
- ``"x"``: ``(B, C, H, W)`` Bernoulli (binary images, so that p(x) can be enumerated) or Gaussian
  (``likelihood="gaussian"``), logits / mean from (s, l, z), masked by ``valid`` per pixel.

The guide is ladder-like: q(s|x) per pixel from x; q(l|x, s); q(z|x, s, l) whose logits are the model's
prior logits of z (decoder parameters, shared) plus encoder logits from x. With ``s`` given, labelled pixels
are kept and void pixels sampled (:class:`hvaeseg.distributions.PartiallyObservedCategorical`); with
``s=None`` the guide uses Pyro's plain :class:`~pyro.distributions.Categorical` (a user's model need not use
hvaeseg's distributions). Under straight-through relaxation ``s`` arrives as one-hot floats ``(B, H, W, K)``.

The generalisation from the HVAE conventions: binary ``x`` (for exact enumeration) and tiny conditional
"networks" (linear maps of one-hot codes). Everything else (site names, shapes, plates, void handling,
parameter sharing) is as in the conventions.
"""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvaeseg.distributions import EmpiricalPrior, PartiallyObservedCategorical
from hvaeseg.traces import per_image_log_prob


def _onehot(s: Tensor, k: int) -> Tensor:
    return s if s.is_floating_point() else F.one_hot(s.clamp(min=0), k).to(torch.get_default_dtype())


class TinyHVAE(nn.Module):
    def __init__(
        self,
        *,
        K: int = 2,
        H: int = 1,
        W: int = 2,
        D: int = 1,
        C: int = 2,
        s_prior: str = "categorical",
        likelihood: str = "bernoulli",
        scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.K, self.H, self.W, self.D, self.C = K, H, W, D, C
        self.s_prior, self.likelihood = s_prior, likelihood
        g = torch.Generator().manual_seed(seed)

        def p(*shape: int) -> nn.Parameter:
            return nn.Parameter(scale * torch.randn(*shape, generator=g))

        # decoder (theta)
        self.s_logits = p(H, W, K)
        self.z_s = p(K)  # z logit per class of the pixel
        self.z_l = p(D)  # z logit per code bit
        self.z_b = p(H, W)
        self.x_s = p(C, K)
        self.x_z = p(C)
        self.x_l = p(C, D)
        self.x_b = p(C, H, W)
        self.x_log_scale = nn.Parameter(torch.zeros(C))
        # encoder (phi)
        self.q_s = p(K, C)
        self.q_s0 = p(H, W, K)
        self.q_l_x = p(D, C * H * W)
        self.q_l_s = p(D, H * W * K)
        self.q_l0 = p(D)
        self.q_z_x = p(C)
        self.q_z0 = p(H, W)

    # --------------------------------------------------------------------------------------- pieces
    def z_prior_logits(self, s1h: Tensor, l: Tensor) -> Tensor:
        """(B, 1, H, W) prior logits of z given one-hot s (B, H, W, K) and l (B, D)."""
        return ((s1h @ self.z_s) + (l @ self.z_l)[:, None, None] + self.z_b).unsqueeze(1)

    def x_params(self, s1h: Tensor, l: Tensor, z: Tensor) -> Tensor:
        """(B, C, H, W) logits (Bernoulli) or mean (Gaussian) of x."""
        xs = torch.einsum("bhwk,ck->bchw", s1h, self.x_s)
        return xs + self.x_z[:, None, None] * z + (l @ self.x_l.T)[:, :, None, None] + self.x_b

    def s_posterior_logits(self, x: Tensor, valid: Tensor | None) -> Tensor:
        """(B, H, W, K) logits of q(s|x) (occluded pixels give no evidence)."""
        xv = x if valid is None else x * valid.unsqueeze(1)
        return torch.einsum("bchw,kc->bhwk", xv, self.q_s) + self.q_s0

    # ---------------------------------------------------------------------------------------- model
    def model(self, x: Tensor | None = None, s: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        if x is not None:
            B = x.shape[0]
        elif s is not None:
            B = s.shape[0]
        elif valid is not None:
            B = valid.shape[0]
        else:
            raise ValueError("tiny model: give x, s or valid (for the batch size)")
        K, H, W, D = self.K, self.H, self.W, self.D
        with pyro.plate("batch", B, dim=-1):
            if self.s_prior == "empirical":
                s_fn = EmpiricalPrior(K, (B, H, W)).to_event(2)
            else:
                s_fn = dist.Categorical(logits=self.s_logits.expand(B, H, W, K)).to_event(2)
            s = pyro.sample("s", s_fn, obs=s)
            s1h = _onehot(s, K)
            l = pyro.sample("l", dist.Bernoulli(probs=torch.full((B, D), 0.5)).to_event(1))
            z = pyro.sample("z", dist.Bernoulli(logits=self.z_prior_logits(s1h, l)).to_event(3))
            par = self.x_params(s1h, l, z)
            if self.likelihood == "gaussian":
                x_fn = dist.Normal(par, self.x_log_scale.exp()[:, None, None].expand_as(par))
            else:
                x_fn = dist.Bernoulli(logits=par)
            if valid is not None:
                x_fn = x_fn.mask(valid.unsqueeze(1))
            return pyro.sample("x", x_fn.to_event(3), obs=x)

    # ---------------------------------------------------------------------------------------- guide
    def guide(self, x: Tensor, s: Tensor | None = None, valid: Tensor | None = None) -> None:
        B, K = x.shape[0], self.K
        xv = x if valid is None else x * valid.unsqueeze(1)
        with pyro.plate("batch", B, dim=-1):
            logits = self.s_posterior_logits(x, valid)
            if s is None:
                s_fn = dist.Categorical(logits=logits)
            else:
                s_fn = PartiallyObservedCategorical(logits, s)
            s_val = pyro.sample("s", s_fn.to_event(2))
            s1h = _onehot(s_val, K)
            l_logits = xv.flatten(1) @ self.q_l_x.T + s1h.flatten(1) @ self.q_l_s.T + self.q_l0
            l = pyro.sample("l", dist.Bernoulli(logits=l_logits).to_event(1))
            z_enc = torch.einsum("bchw,c->bhw", xv, self.q_z_x) + self.q_z0
            z_logits = self.z_prior_logits(s1h, l) + z_enc.unsqueeze(1)
            pyro.sample("z", dist.Bernoulli(logits=z_logits).to_event(3))

    # --------------------------------------------------------------------------------------- groups
    def decoder_parameters(self) -> list[nn.Parameter]:
        names = ["s_logits", "z_s", "z_l", "z_b", "x_s", "x_z", "x_l", "x_b"]
        if self.likelihood == "gaussian":
            names.append("x_log_scale")
        if self.s_prior == "empirical":
            names.remove("s_logits")
        return [getattr(self, n) for n in names]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [self.q_s, self.q_s0, self.q_l_x, self.q_l_s, self.q_l0, self.q_z_x, self.q_z0]


# ------------------------------------------------------------------------------------------ enumeration
def all_binary(n: int) -> Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def all_latents(m: TinyHVAE) -> dict[str, Tensor]:
    """Every configuration of (s, l, z): ``{"s": (N, H, W) long, "l": (N, D), "z": (N, 1, H, W)}``."""
    HW = m.H * m.W
    ss = torch.tensor(list(itertools.product(range(m.K), repeat=HW))).reshape(-1, m.H, m.W)
    ls = all_binary(m.D)
    zs = all_binary(HW).reshape(-1, 1, m.H, m.W)
    S, L, Z = [], [], []
    for s, l, z in itertools.product(ss, ls, zs):
        S.append(s)
        L.append(l)
        Z.append(z)
    return {"s": torch.stack(S), "l": torch.stack(L), "z": torch.stack(Z)}


def all_images(m: TinyHVAE) -> Tensor:
    """Every binary image ``(2^(C H W), C, H, W)``."""
    return all_binary(m.C * m.H * m.W).reshape(-1, m.C, m.H, m.W)


def log_joint(m: TinyHVAE, x: Tensor, h: dict[str, Tensor], valid: Tensor | None = None) -> Tensor:
    """log p(x, s, l, z) per row (rows of x and h aligned), differentiable in theta."""
    cond = poutine.condition(m.model, data={"l": h["l"], "z": h["z"]})
    tr = poutine.trace(cond).get_trace(x=x, s=h["s"], valid=valid)
    return per_image_log_prob(tr, x.shape[0])


def log_guide(
    m: TinyHVAE, x: Tensor, h: dict[str, Tensor], valid: Tensor | None = None, s_given: Tensor | None = None
) -> Tensor:
    """log q(h | x) per row; with ``s_given`` (void = -1): log q(s_void, l, z | x, s_given)."""
    cond = poutine.condition(m.guide, data={"s": h["s"], "l": h["l"], "z": h["z"]})
    tr = poutine.trace(cond).get_trace(x, s=s_given, valid=valid)
    return per_image_log_prob(tr, x.shape[0])


def log_guide_no_s(m: TinyHVAE, x: Tensor, h: dict[str, Tensor], valid: Tensor | None = None) -> Tensor:
    """log q(l, z | x, s) per row (the "s" site left out)."""
    cond = poutine.condition(m.guide, data={"s": h["s"], "l": h["l"], "z": h["z"]})
    tr = poutine.trace(cond).get_trace(x, s=None, valid=valid)
    return per_image_log_prob(tr, x.shape[0], exclude=("s",))


def rows(h: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
    return {k: v[idx] for k, v in h.items()}


def consistent(h: dict[str, Tensor], s: Tensor) -> Tensor:
    """bool (N,): configurations whose s agrees with the labelled pixels of ``s`` (H, W)."""
    lab = s >= 0
    return ((h["s"] == s) | ~lab).flatten(1).all(1)


def enumerate_given(
    m: TinyHVAE, x: Tensor, valid: Tensor, s: Tensor | None = None
) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor | None]:
    """Every latent configuration for one image ``x`` (restricted to those agreeing with the labelled pixels
    of ``s`` when given), with ``x``, ``valid`` and ``s`` repeated to match: ``(h, xx, vv, s_given)``."""
    h = all_latents(m)
    n = len(h["s"])
    xx, vv = x.expand(n, *x.shape[1:]), valid.expand(n, *valid.shape[1:])
    if s is None:
        return h, xx, vv, None
    ok = consistent(h, s[0])
    h, xx, vv = rows(h, ok), xx[ok], vv[ok]
    return h, xx, vv, s.expand(len(xx), *s.shape[1:])


def log_marginal(m: TinyHVAE, x: Tensor, valid: Tensor | None = None) -> Tensor:
    """Exact log p(x) per image of ``x`` (B, C, H, W), by enumeration of (s, l, z)."""
    h = all_latents(m)
    n = h["s"].shape[0]
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].expand(n, *x.shape[1:])
        vb = None if valid is None else valid[b : b + 1].expand(n, *valid.shape[1:])
        out.append(torch.logsumexp(log_joint(m, xb, h, vb), 0))
    return torch.stack(out)
