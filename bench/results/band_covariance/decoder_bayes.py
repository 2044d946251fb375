"""Diagnostic for issue 10: the decoder of an HVAE run as a per-pixel classifier.

``argmax_k log p(s = k) + log p(x | s = k everywhere)`` (the decoder's Bayes rule), against the run's encoder
q(s|x) and their product, on the test split. Meaningful for hierarchies whose image has ``s`` (and covariates)
as its only latent parent. Prints the three accuracies and the decoder's IoU per class.

    python bench/results/band_covariance/decoder_bayes.py RUN_DIR
"""

import sys
from pathlib import Path

import pyro.poutine as poutine
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from hvaeseg.data.loader import PatchLoader  # noqa: E402
from hvaeseg.experiment import load_run  # noqa: E402
from hvaeseg.traces import unwrap  # noqa: E402


@torch.no_grad()
def main(run: str) -> None:
    torch.set_num_threads(1)
    _, data, method = load_run(run)
    hvae, K = method.hvae, data.num_classes
    loader = PatchLoader(data.cube, data.eval_plan.select(split="test"), batch_size=8, device="cpu", workers=1)
    n = right_decoder = right_encoder = right_product = 0
    conf = torch.zeros(K, K)
    for b in loader.batches(0):
        B, _, H, W = b.x.shape
        per_class = []
        for k in range(K):
            s = torch.full((B, H, W), k, dtype=torch.long)
            fn = unwrap(poutine.trace(hvae.model).get_trace(None, s, b.valid, doy=b.doy).nodes["x"]["fn"])
            per_class.append(fn.pixel_log_prob(b.x) if hasattr(fn, "pixel_log_prob") else fn.log_prob(b.x).sum(-3))
        lp = torch.stack(per_class, -1)  # (B, H, W, K)
        if hvae.decoder.s_logits is not None:
            lp = lp + torch.log_softmax(hvae.decoder.s_logits, -1)
        q = method.predict_proba(b.x, b.valid, b.doy)  # (B, K, H, W)
        m = b.valid & (b.labels >= 0)
        truth = b.labels[m]
        decoder = lp.argmax(-1)[m]
        n += int(m.sum())
        right_decoder += int((decoder == truth).sum())
        right_encoder += int((q.argmax(1)[m] == truth).sum())
        right_product += int(((q.clamp(min=1e-6).log().movedim(1, -1) + lp).argmax(-1)[m] == truth).sum())
        conf += torch.bincount(truth * K + decoder, minlength=K * K).reshape(K, K).float()
    iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag()).clamp(min=1)
    print(f"decoder-Bayes acc {right_decoder / n:.3f}  encoder acc {right_encoder / n:.3f}  "
          f"q*p(x|s) acc {right_product / n:.3f}  pixels {n}  decoder IoU {[round(float(v), 3) for v in iou]}")


if __name__ == "__main__":
    main(sys.argv[1])
