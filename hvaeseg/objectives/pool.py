"""The label pool of symmetric learning, and filling of void pixels for generation.

The sleep term of symmetric learning generates images from label maps ``s''`` drawn from a *label pool*:
the labelled training maps (with their dihedral transforms) plus any label-only maps the user supplies.
The labels of the images used as *unlabelled* must never enter the pool (that would leak labels into
training). :class:`LabelPool` therefore takes only labelled maps, and can verify, given the label maps of
the unlabelled images (e.g. the hidden truth of a simulated label budget), that none of its maps is one of
them; see :class:`LabelLeakError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hvaeseg.dihedral import DihedralElement

__all__ = ["LabelLeakError", "LabelPool", "dihedral_transforms", "fill_void_nearest", "find_leaks"]

#: number of elements of one (void x labelled) squared-distance block in :func:`fill_void_nearest`
_BLOCK = 1 << 22


# ------------------------------------------------------------------------------------------ void filling
def fill_void_nearest(maps: Tensor) -> Tensor:
    """Fill every void pixel (``-1``) with the class of the nearest labelled pixel of the same map.

    Rule: nearest in Euclidean pixel distance; among equally near labelled pixels the first in row-major
    order (smallest ``y``, then smallest ``x``) wins. Distances are computed exactly in integers, so the
    result is deterministic and the same on every device.

    :param maps: ``(B, H, W)`` (or ``(H, W)``) int64 label maps, ``-1`` = void.
    :returns: a new tensor of the same shape and dtype with no void pixel.
    :raises ValueError: when a map has no labelled pixel at all (nothing to fill from).
    """
    if maps.dim() == 2:
        return fill_void_nearest(maps.unsqueeze(0)).squeeze(0)
    if maps.dim() != 3:
        raise ValueError(f"expected label maps of shape (B, H, W) or (H, W), got {tuple(maps.shape)}")
    out = maps.clone()
    labelled = maps >= 0
    empty = ~labelled.flatten(1).any(1)
    if bool(empty.any()):
        raise ValueError(
            f"expected every label map to have at least one labelled pixel, got all-void map(s) at "
            f"index {empty.nonzero().flatten().tolist()}; drop them from the label pool"
        )
    for b in torch.nonzero((~labelled).flatten(1).any(1)).flatten().tolist():
        lab = labelled[b].nonzero()  # (n_l, 2), row-major order
        void = (~labelled[b]).nonzero()  # (n_v, 2)
        classes = maps[b][labelled[b]]  # row-major, aligned with lab
        step = max(1, _BLOCK // max(1, lab.shape[0]))
        for start in range(0, void.shape[0], step):
            v = void[start : start + step]
            d2 = ((v[:, None, :] - lab[None, :, :]) ** 2).sum(-1)  # exact int64 squared distances
            nearest = d2.argmin(dim=1)  # first minimum = row-major first among ties
            out[b, v[:, 0], v[:, 1]] = classes[nearest]
    return out


# --------------------------------------------------------------------------------------- dihedral group
#: the transforms of square maps, in pool order: the 4 rotations of the map, then the 4 rotations of its
#: transpose (``rot90^k o transpose`` is the element ``(k + 1, flip)``)
_SQUARE = (tuple(DihedralElement(k, False) for k in range(4))
           + tuple(DihedralElement((k + 1) % 4, True) for k in range(4)))
#: the shape-keeping ones for non-square maps: identity, vertical flip, horizontal flip, rotation by 180 degrees
_RECTANGULAR = (
    DihedralElement(0, False), DihedralElement(2, True), DihedralElement(0, True), DihedralElement(2, False)
)


def _elements(maps: Tensor) -> tuple[DihedralElement, ...]:
    h, w = maps.shape[-2:]
    return _SQUARE if h == w else _RECTANGULAR


def dihedral_transforms(maps: Tensor) -> list[Tensor]:
    """The images of ``(..., H, W)`` maps under the dihedral group of the square (:mod:`hvaeseg.dihedral`).

    :param maps: tensor whose last two dims are (H, W).
    :returns: for square maps all 8 transforms (the 4 rotations of the map, then the 4 rotations of its
        transpose); for non-square maps the 4 that keep the shape (identity, vertical flip, horizontal
        flip, rotation by 180 degrees). The identity is first.
    """
    return [g(maps) for g in _elements(maps)]


def _transform(maps: Tensor, index: int) -> Tensor:
    """Transform number ``index`` of :func:`dihedral_transforms` (without building the others)."""
    return _elements(maps)[index](maps)


# ------------------------------------------------------------------------------------------- leak check
class LabelLeakError(ValueError):
    """A map offered to the label pool is (a view, a copy, a dihedral transform or a partially voided copy
    of) the label map of an image used as unlabelled."""


def _as_maps(maps: Tensor | Sequence[Tensor], what: str) -> Tensor:
    if isinstance(maps, Tensor):
        t = maps
    else:
        items = list(maps)
        if not items:
            raise ValueError(f"expected at least one {what} map, got none")
        shapes = {tuple(m.shape) for m in items}
        if len(shapes) > 1:
            raise ValueError(f"expected {what} maps of one shape (H, W), got shapes {sorted(shapes)}")
        t = torch.stack([torch.as_tensor(m) for m in items])
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"expected {what} maps of shape (N, H, W), got {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"expected integer {what} maps (class ids, -1 = void), got dtype {t.dtype}")
    return t


def _byte_addresses(t: Tensor) -> tuple[str, Tensor]:
    """(device, sorted int64 addresses of every byte of every element ``t`` refers to)."""
    idx = torch.full((), int(t.storage_offset()), dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride(), strict=True):
        idx = idx.unsqueeze(-1) + torch.arange(size, dtype=torch.int64) * stride
    start = t.untyped_storage().data_ptr() + idx.flatten() * t.element_size()
    addr = (start[:, None] + torch.arange(t.element_size(), dtype=torch.int64)).flatten()
    return str(t.device), addr.unique()


def _tensors(maps: Tensor | Sequence[Tensor] | None) -> list[Tensor]:
    if maps is None:
        return []
    return [maps] if isinstance(maps, Tensor) else [m for m in maps if isinstance(m, Tensor)]


def _shares_memory(a: Tensor | Sequence[Tensor], b: Tensor | Sequence[Tensor]) -> bool:
    """Whether some element of the tensors ``a`` occupies memory of some element of the tensors ``b``
    (element by element: two disjoint crops of one label array do *not* share memory)."""
    addr_b: dict[str, list[Tensor]] = {}
    for t in _tensors(b):
        dev, addr = _byte_addresses(t)
        addr_b.setdefault(dev, []).append(addr)
    for t in _tensors(a):
        dev, addr = _byte_addresses(t)
        for other in addr_b.get(dev, []):
            if bool(torch.isin(addr, other).any()):
                return True
    return False


def find_leaks(pool_maps: Tensor, unlabelled_maps: Tensor) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` where pool map ``i`` reveals unlabelled map ``j`` (or one of its dihedral transforms).

    Pool map ``m`` reveals map ``u`` when every pixel labelled in ``m`` is labelled in ``u`` with the same
    class, and those pixels contain at least two classes. (A map of a single class is not evidence of a
    leak: two different all-water patches have equal maps.) This catches exact copies, dihedral transforms
    and copies with pixels set to void.
    """
    found: list[tuple[int, int]] = []
    if pool_maps.shape[-2:] != unlabelled_maps.shape[-2:]:
        return found
    m = pool_maps.to(torch.int64)
    lab = m >= 0
    flat_m = m.flatten(1)
    informative = torch.tensor(
        [bool(lab[i].any()) and int(flat_m[i][lab[i].flatten()].unique().numel()) >= 2 for i in range(len(m))],
        dtype=torch.bool,
    )
    for u in dihedral_transforms(unlabelled_maps.to(torch.int64)):
        if u.shape[-2:] != m.shape[-2:]:
            continue
        # (N_pool, N_unl) match matrix, chunked over the unlabelled maps
        step = max(1, _BLOCK // max(1, m[0].numel() * len(m)))
        for start in range(0, len(u), step):
            uu = u[start : start + step]
            agree = (m[:, None] == uu[None]) | ~lab[:, None]
            match = agree.flatten(2).all(-1) & informative[:, None].to(agree.device)
            for i, j in match.nonzero().tolist():
                found.append((i, start + j))
    return sorted(set(found))


# ----------------------------------------------------------------------------------------------- pool
class LabelPool:
    """A pool of label maps ``s''`` for the sleep term of symmetric learning.

    Built from the *labelled* training maps (plus, by default, their dihedral transforms: 8 for square maps,
    4 for non-square ones) and optional label-only maps supplied by the user. It never takes the labels of
    images used as unlabelled; pass those as ``unlabelled=`` and the constructor verifies that none of the
    pool's maps is (a view of, a copy of, a dihedral transform of, or a partially voided copy of) one of
    them, raising :class:`LabelLeakError` otherwise.

    :param maps: labelled training maps, ``(N, H, W)`` int tensor or a sequence of ``(H, W)`` tensors,
        ``-1`` = void. Maps with no labelled pixel are dropped (they carry no information).
    :param dihedral: include the dihedral transforms of every map (applied at sampling time).
    :param extra_maps: optional user label-only maps of the same ``(H, W)`` (e.g. from a land-cover product).
    :param seed: seed of the pool's own generator, used when :meth:`sample` gets none.
    :param unlabelled: optional label maps of the images used as unlabelled (their hidden truth); checked
        against every pool map by memory (a view or slice of the same storage) and by content
        (:func:`find_leaks`).
    """

    def __init__(
        self,
        maps: Tensor | Sequence[Tensor],
        *,
        dihedral: bool = True,
        extra_maps: Tensor | Sequence[Tensor] | None = None,
        seed: int = 0,
        unlabelled: Tensor | Sequence[Tensor] | None = None,
    ) -> None:
        sources = [("labelled", maps)] + ([("extra", extra_maps)] if extra_maps is not None else [])
        if unlabelled is not None:
            for what, src in sources:
                if _shares_memory(src, unlabelled):
                    raise LabelLeakError(
                        f"expected {what} maps that do not share memory with the unlabelled images' labels, "
                        "got a view of the same pixels; the label pool must never contain labels of images "
                        "used as unlabelled"
                    )
        parts = [_as_maps(src, what) for what, src in sources]
        shapes = {tuple(p.shape[-2:]) for p in parts}
        if len(shapes) > 1:
            raise ValueError(
                f"expected labelled and extra maps of one size (H, W), got {sorted(shapes)}; crop the extra "
                "maps to the patch size"
            )
        all_maps = torch.cat([p.to(torch.int64) for p in parts]).detach().clone()
        if bool((all_maps < -1).any()):
            raise ValueError("expected class ids >= 0 or -1 (void) in the label maps, got values below -1")
        if unlabelled is not None:
            u = _as_maps(unlabelled, "unlabelled").to(torch.int64)
            leaks = find_leaks(all_maps, u)
            if leaks:
                i, j = leaks[0]
                raise LabelLeakError(
                    f"expected no pool map equal to an unlabelled image's labels, got {len(leaks)} match(es), "
                    f"e.g. pool map {i} reveals unlabelled map {j}; build the pool from the labelled maps "
                    "(and label-only maps) only"
                )
        keep = (all_maps >= 0).flatten(1).any(1)
        if not bool(keep.any()):
            raise ValueError("expected at least one label map with a labelled pixel, got only all-void maps")
        self.maps = all_maps[keep].to(torch.int16 if int(all_maps.max()) < 2**15 else torch.int64)
        self.dihedral = bool(dihedral)
        self.num_transforms = len(dihedral_transforms(self.maps[:1])) if self.dihedral else 1
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        """Number of distinct (map, transform) pairs the pool draws from."""
        return len(self.maps) * self.num_transforms

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the maps."""
        return int(self.maps.shape[-2]), int(self.maps.shape[-1])

    def all_maps(self) -> Tensor:
        """Every map of the pool with every transform, ``(len(self), H, W)`` int64."""
        if not self.dihedral:
            return self.maps.long()
        return torch.cat([t.long() for t in dihedral_transforms(self.maps)])

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, device: torch.device | str | None = None
    ) -> Tensor:
        """``n`` label maps drawn uniformly with replacement over (map, transform) pairs.

        :param n: number of maps.
        :param generator: CPU generator to draw with (default: the pool's own, seeded by ``seed``).
        :param device: where to put the result.
        :returns: ``(n, H, W)`` int64, ``-1`` = void.
        """
        if n < 1:
            raise ValueError(f"expected n >= 1, got {n}")
        g = self.generator if generator is None else generator
        idx = torch.randint(len(self.maps), (n,), generator=g)
        tr = torch.randint(self.num_transforms, (n,), generator=g)
        chosen = self.maps[idx].long()
        out = torch.empty_like(chosen)
        for k in range(self.num_transforms):
            sel = tr == k
            if bool(sel.any()):
                out[sel] = _transform(chosen[sel], k)
        return out if device is None else out.to(device)
