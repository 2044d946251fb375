"""Diagnostic for issue 10: segment with the encoder and the decoder together.

For a finished exact-s HVAE run, scores the rule ``argmax_k log q(s=k|x) + beta log p(x|s=k)`` (the encoder's
prediction times the decoder's exact class likelihood raised to ``beta``; ``beta`` 0 is the run's own prediction,
1 the product of two experts with the prior counted once, inside q) on the val and test tiles, every labelled
pixel (under clouds the likelihood is 1), and picks ``beta`` by validation mean IoU, as the run's checkpoint was
picked. Prints one JSON line: accuracy and mean IoU per ``beta`` and split, the picked ``beta``, its test scores.

    python bench/results/exact_s/prediction_rule.py RUN [best.pt|checkpoint.pt] [--teacher]

``--teacher``: the evidence ``log p(x|s=k)`` is the Polyak-averaged decoder's (``teacher_decay``), not the live one's.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from hvaeseg.data.loader import PatchLoader  # noqa: E402
from hvaeseg.experiment import load_run  # noqa: E402
from hvaeseg.metrics import ConfusionMatrix  # noqa: E402

BETAS = (0.0, 0.25, 0.5, 1.0)


@torch.no_grad()
def split_scores(method, data, split: str, teacher: bool = False) -> dict[float, tuple[float, float]]:
    """``{beta: (accuracy, mean IoU)}`` on one split of the run's evaluation tiles (``teacher``: the evidence of the
    run's averaged decoder)."""
    hvae, K = method.hvae, data.num_classes
    evidence = method.teacher if teacher else hvae
    cms = {beta: ConfusionMatrix(K) for beta in BETAS}
    loader = PatchLoader(data.cube, data.eval_plan.select(split=split), batch_size=8, device="cpu", workers=1)
    for b in loader.batches(0):
        doy = b.doy if hvae.spec.day_of_year else None
        log_lik = evidence.class_log_likelihood(b.x, b.valid, doy=doy)  # (B, H, W, K); 0 where invalid
        log_q = method.predict_proba(b.x, b.valid, b.doy).clamp(min=1e-8).log().movedim(1, -1)
        for beta, cm in cms.items():
            cm.update((log_q + beta * log_lik).argmax(-1), b.labels)
    return {beta: (round(cm.accuracy(), 4), round(cm.mean_iou(), 4)) for beta, cm in cms.items()}


def main(run: str, checkpoint: str = "best.pt", flags: tuple[str, ...] = ()) -> None:
    torch.set_num_threads(1)
    _, data, method = load_run(run, checkpoint=checkpoint)
    method.decoder_beta = 0.0  # a run with decoder_betas predicts with its chosen beta: q(s|x) alone here
    teacher = "--teacher" in flags
    if teacher and getattr(method, "teacher", None) is None:
        raise SystemExit(f"{run} has no averaged decoder (teacher_decay 0): drop --teacher")
    val, test = split_scores(method, data, "val", teacher), split_scores(method, data, "test", teacher)
    pick = max(BETAS, key=lambda beta: (val[beta][1], -beta))
    print(json.dumps({"run": run, "evidence": "teacher" if teacher else "decoder", "val": val, "test": test,
                      "picked_beta": pick, "test_at_picked": test[pick]}))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*[a for a in args if not a.startswith("--")], flags=tuple(a for a in args if a.startswith("--")))
