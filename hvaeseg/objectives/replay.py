r"""Replayed batches for the decoder of symmetric learning with an exact ``s`` posterior.

With ``exact_s`` the decoder of symmetric learning ascends the exact log-likelihood
:math:`w_1 E_{(x,s)} \log p(x, s_{lab}) + w_2 E_{x'} \log p(x')` (:mod:`hvaeseg.objectives.exact`), which does not
depend on the encoder. A batch of data can therefore be scored again on later steps at the cost of the decoder
alone (a pixel mixture's: no encoder pass), and the decoder's gradient becomes the average over the current
batch and the last ``size`` ones: still an estimate of the same expectation over the data, from ``size + 1``
times as many images, so with less noise. This is what lets a small decoder at a high learning rate follow the
data without wandering from step to step, which is what the encoder learns from (``posterior_q``). The ELBO's
decoder gradient is weighted by each image's q(s|x) and would need the encoder on every replayed image, so this
is for symmetric learning only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor

from hvaeseg.objectives._common import as_labelled, as_unlabelled
from hvaeseg.objectives.exact import exact_log_likelihood

__all__ = ["DecoderReplay"]


class DecoderReplay:
    """The last ``size`` labelled and unlabelled batches, scored again by the decoder's exact log-likelihood.

    :param size: how many past batches of each stream are kept (>= 1).
    """

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"expected the replay size as an int >= 1 (batches), got {size!r}")
        self.size = size
        self.labelled: deque[Any] = deque(maxlen=size)
        self.unlabelled: deque[Any] = deque(maxlen=size)

    def __len__(self) -> int:
        return max(len(self.labelled), len(self.unlabelled))

    def decoder_loss(
        self, model: Any, current: Tensor, weights: tuple[float, float], *, labelled: Any = None,
        unlabelled: Any = None,
    ) -> Tensor:
        """The decoder's loss averaged over this step's batches and the kept ones, then this step's batches kept.

        :param model: the model of an :class:`hvaeseg.HVAE` with an exact ``s`` posterior.
        :param current: this step's decoder loss, ``-(w1 * labelled_p + w2 * unlabelled_p)`` (means per image).
        :param weights: ``(w1, w2)``, the weights of the labelled and the unlabelled term.
        :param labelled: this step's labelled batch (``PatchBatch`` or ``(x, s, valid)``), or None.
        :param unlabelled: this step's unlabelled batch, or None.
        :returns: ``(current + sum_j loss_j) / (1 + n)`` over the ``n`` kept steps, where ``loss_j`` is the same
            weighted sum on the kept batches of step ``j`` (a stream without a kept batch adds nothing).
        """
        w_lab, w_unl = weights
        total, n = current, len(self)
        for i in range(n):
            lab = self.labelled[i] if i < len(self.labelled) and w_lab > 0 else None
            unl = self.unlabelled[i] if i < len(self.unlabelled) and w_unl > 0 else None
            if lab is not None:
                total = total - w_lab * exact_log_likelihood(model, labelled=lab)
            if unl is not None:
                total = total - w_unl * exact_log_likelihood(model, unlabelled=unl)
        lab_now, unl_now = as_labelled(labelled), as_unlabelled(unlabelled)
        if lab_now is not None:
            self.labelled.append(_detached(lab_now))
        if unl_now is not None:
            self.unlabelled.append(_detached(unl_now))
        return total / (1 + n)

    def state_dict(self) -> dict[str, Any]:
        """The kept batches as tuples of tensors (``torch.load(weights_only=True)`` reads them)."""
        return {"labelled": [tuple(b) for b in self.labelled], "unlabelled": [tuple(b) for b in self.unlabelled]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.labelled = deque((as_labelled(tuple(b)) for b in state["labelled"]), maxlen=self.size)
        self.unlabelled = deque((as_unlabelled(tuple(b)) for b in state["unlabelled"]), maxlen=self.size)


def _detached(batch: Any) -> Any:
    return type(batch)(*(v.detach() if isinstance(v, torch.Tensor) else v for v in batch))
