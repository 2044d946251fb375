"""The per-pixel gradient-boosting baseline (``--method pixel-gbm``): LightGBM on per-pixel spectra.

What a remote-sensing practitioner fits with a handful of labelled patches: every labelled pixel is one
training row whose features are its reflectance in every band of every date of the patch, plus (optionally)
spectral indices computed from that reflectance; no spatial context at all. The model is a multiclass
LightGBM booster early-stopped on the validation tiles (``multi_logloss``).

Which pixels count: every labelled (non-void) pixel of the run's labelled patches, as for the supervised U-Net
(:mod:`hvaeseg.methods.supervised`), including pixels that are invalid (cloudy, no data): their features on
a date where they are invalid are NaN, which LightGBM treats as missing, so a pixel invalid on every date is
classified by the missing-value branches (in effect a learned prior).

Units: the loader gives ``x = (reflectance - band_mean) / band_std``. Trees do not care about a per-band
affine map, but ratio indices do, so the features are computed from the reflectance
``x * band_std + band_mean`` (the cube's statistics, :mod:`hvaeseg.data.stats`); without statistics ``x`` is
taken to be reflectance already.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from hvaeseg.methods.base import FittedMethod
from hvaeseg.nets.covariates import DOY_FEATURES, doy_features

if TYPE_CHECKING:  # pragma: no cover
    from hvaeseg.data.loader import PatchBatch

__all__ = ["INDICES", "PixelGBMConfig", "PixelGBMMethod", "feature_names", "pixel_features"]

#: normalised-difference indices ``(a - b) / (a + b)``: name, band a, band b (skipped when a band is missing)
INDICES: tuple[tuple[str, str, str], ...] = (
    ("ndvi", "B08", "B04"),  # vegetation
    ("ndwi", "B03", "B08"),  # open water (McFeeters)
    ("ndbi", "B11", "B08"),  # built-up; NDMI (moisture) is its negative, so one of the two suffices
)
#: the per-date brightness feature: the mean reflectance over the bands
BRIGHTNESS = "brightness"
#: |a + b| below this gives a NaN index rather than a huge ratio
_DENOMINATOR_EPS = 1e-6


def _lightgbm() -> Any:
    try:
        import lightgbm
    except ImportError as err:
        raise ImportError(
            "the pixel-gbm method needs LightGBM: `pip install lightgbm` (it is a dependency of hvaeseg; "
            "reinstall with `pip install -e .`)"
        ) from err
    except OSError as err:  # pragma: no cover - the wheel links the system's OpenMP runtime
        raise ImportError(
            f"LightGBM is installed but its library does not load ({err}); on Linux it needs the OpenMP runtime "
            "libgomp (Debian/Ubuntu: `apt-get install libgomp1`)"
        ) from err
    return lightgbm


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelGBMConfig:
    """Hyper-parameters of the per-pixel gradient-boosting baseline.

    :param num_leaves: leaves per tree.
    :param learning_rate: shrinkage.
    :param max_trees: boosting rounds at most (early stopping usually ends sooner); each round grows one tree
        per class.
    :param early_stopping_rounds: stop when the validation ``multi_logloss`` has not improved for this many
        rounds; the model keeps the best round.
    :param min_child_samples: minimum training pixels in a leaf. 100 rather than LightGBM's 20: the labelled
        pixels of a few patches are strongly correlated, and small leaves fit them, not the scene (chosen on
        the validation split: mean IoU 0.798 -> 0.839 on the real cloud / shadow scene at 10 labelled
        patches, 0.444 -> 0.442 on synthetic:small).
    :param feature_fraction: share of the features drawn for each tree.
    :param bagging_fraction: share of the training pixels drawn for each tree (1 = no bagging).
    :param lambda_l2: L2 regularisation of the leaf values.
    :param indices: add spectral indices (:data:`INDICES`, brightness) to the band features.
    :param max_val_pixels: uniform random subsample of the validation pixels used for early stopping.
    :param max_train_pixels: uniform random subsample of the labelled pixels (None = all of them).
    :param threads: LightGBM threads (None = its OpenMP default, which follows ``OMP_NUM_THREADS``).
    :param day_of_year: add each date's day of the year (:func:`~hvaeseg.nets.covariates.doy_features`:
        sine and cosine of the annual harmonics) as features: the acquisition date is known, and the
        practitioner's classifier uses it (phenology).
    """

    num_leaves: int = 31
    learning_rate: float = 0.05
    max_trees: int = 1000
    early_stopping_rounds: int = 50
    min_child_samples: int = 100
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    indices: bool = True
    max_val_pixels: int = 50000
    max_train_pixels: int | None = None
    threads: int | None = None
    day_of_year: bool = True

    def __post_init__(self) -> None:
        def integer(name: str, low: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                what = f"an integer >= {low}" + (" or None" if optional else "")
                raise ValueError(f"{name}: expected {what}, got {v!r}")
            object.__setattr__(self, name, int(v))

        def fraction(name: str, low_open: bool, low: float = 0.0) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or not (v > low if low_open else v >= low):
                raise ValueError(f"{name}: expected a number {'>' if low_open else '>='} {low}, got {v!r}")
            object.__setattr__(self, name, float(v))

        integer("num_leaves", 2)
        integer("max_trees", 1)
        integer("early_stopping_rounds", 1)
        integer("min_child_samples", 1)
        integer("max_val_pixels", 1)
        integer("max_train_pixels", 1, optional=True)
        integer("threads", 1, optional=True)
        fraction("learning_rate", True)
        fraction("lambda_l2", False)
        for name in ("feature_fraction", "bagging_fraction"):
            fraction(name, True)
            if getattr(self, name) > 1:
                raise ValueError(f"{name}: expected a fraction in (0, 1], got {getattr(self, name)!r}")
        for name in ("indices", "day_of_year"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")

    def lightgbm_params(self, num_classes: int, seed: int) -> dict[str, Any]:
        """The LightGBM training parameters (multiclass, deterministic, quiet)."""
        params: dict[str, Any] = {
            "objective": "multiclass",
            "num_class": int(num_classes),
            "metric": "multi_logloss",
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,  # LightGBM bags only with a frequency
            "lambda_l2": self.lambda_l2,
            "seed": int(seed),
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }
        if self.threads is not None:
            params["num_threads"] = self.threads
        return params


# --------------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------------


def _band_lookup(band_names: Sequence[str]) -> dict[str, int]:
    return {str(b).upper(): i for i, b in enumerate(band_names)}


def feature_names(
    band_names: Sequence[str], dates: int = 1, *, indices: bool = True, day_of_year: bool = False
) -> list[str]:
    """Names of the columns :func:`pixel_features` returns: per date ``t``, ``t{t}_{band}`` for every band,
    then (with ``indices``) the indices whose bands the cube has and ``t{t}_brightness``, then (with
    ``day_of_year``) ``t{t}_doy0 ..`` the day-of-year features."""
    per_date = [str(b) for b in band_names]
    if indices:
        have = _band_lookup(band_names)
        per_date += [name for name, a, b in INDICES if a in have and b in have]
        per_date.append(BRIGHTNESS)
    if day_of_year:
        per_date += [f"doy{i}" for i in range(DOY_FEATURES)]
    return [f"t{t}_{name}" for t in range(dates) for name in per_date]


def pixel_features(
    x: Tensor,
    valid: Tensor,
    band_names: Sequence[str],
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
    *,
    indices: bool = True,
    doy: Tensor | None = None,
) -> np.ndarray:
    """Per-pixel features ``(N, F)`` float32, rows in ``(b, y, x)`` row-major order (``N = B * H * W``).

    :param x: ``(B, C, H, W)`` or ``(B, T, C, H, W)``: normalised reflectance as the loader gives it (or
        reflectance when ``band_mean`` is None).
    :param valid: ``(B, H, W)`` or ``(B, T, H, W)`` bool; a pixel's features on a date where it is invalid are NaN.
    :param band_names: the cube's ``band`` coordinate (``C`` names).
    :param band_mean: per-band mean and ``band_std`` per-band standard deviation the loader normalised with;
        the features are computed from ``x * band_std + band_mean``.
    :param indices: add the normalised-difference :data:`INDICES` whose bands exist, and the brightness.
    :param doy: ``(B,)`` or ``(B, T)`` days of the year of the dates: adds the day-of-year features of each
        date (known on invalid pixels too, so never NaN).
    :returns: the columns named by :func:`feature_names` ``(band_names, T, indices=indices,
        day_of_year=doy is not None)``.
    """
    if x.dim() == 4:
        x, valid = x.unsqueeze(1), valid.unsqueeze(1)
    if x.dim() != 5 or valid.dim() != 4:
        raise ValueError(f"expected x (B, C, H, W) or (B, T, C, H, W) with valid one dim less, got x "
                         f"{tuple(x.shape)} and valid {tuple(valid.shape)}")
    B, T, C, H, W = x.shape
    if tuple(valid.shape) != (B, T, H, W):
        raise ValueError(f"valid: expected shape {(B, T, H, W)} for x {tuple(x.shape)}, got {tuple(valid.shape)}")
    if len(band_names) != C:
        raise ValueError(f"band_names: expected {C} names for x's {C} bands, got {len(band_names)}")
    refl = x.detach().to("cpu", torch.float64).numpy()
    if band_mean is not None or band_std is not None:
        mean = np.zeros(C) if band_mean is None else np.asarray(band_mean, np.float64)
        std = np.ones(C) if band_std is None else np.asarray(band_std, np.float64)
        if mean.shape != (C,) or std.shape != (C,):
            raise ValueError(f"expected {C} band statistics, got mean {mean.shape} and std {std.shape}")
        refl = refl * std[:, None, None] + mean[:, None, None]
    columns = [refl]  # (B, T, C, H, W)
    if indices:
        have = _band_lookup(band_names)
        extra = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for _, a, b in INDICES:
                if a in have and b in have:
                    ra, rb = refl[:, :, have[a]], refl[:, :, have[b]]
                    den = ra + rb
                    extra.append(np.where(np.abs(den) > _DENOMINATOR_EPS, (ra - rb) / den, np.nan))
        extra.append(refl.mean(axis=2))
        columns.append(np.stack(extra, axis=2))
    feats = np.concatenate(columns, axis=2)  # (B, T, F0, H, W)
    invalid = ~valid.detach().cpu().numpy().astype(bool)
    feats = np.where(invalid[:, :, None], np.nan, feats)
    if doy is not None:
        if doy.numel() != B * T:
            raise ValueError(f"doy: expected {B * T} days of the year (one per patch and date), got {tuple(doy.shape)}")
        d = doy_features(doy.detach().to("cpu", torch.float64).reshape(B, T)).numpy()  # (B, T, F_doy)
        feats = np.concatenate([feats, np.broadcast_to(d[:, :, :, None, None], (B, T, d.shape[-1], H, W))], axis=2)
    F0 = feats.shape[2]
    return np.ascontiguousarray(feats.transpose(0, 3, 4, 1, 2).reshape(B * H * W, T * F0), dtype=np.float32)


class _Subsample:
    """A uniform random subsample of at most ``limit`` rows of a stream of row blocks (None = keep all), in
    bounded memory: every row gets a random key and the ``limit`` smallest keys are kept. The kept rows are
    returned in stream order; the draw depends on ``seed`` and the stream only."""

    def __init__(self, limit: int | None, seed: int) -> None:
        self.limit, self.rng = limit, np.random.default_rng(seed)
        self.feats: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.order: list[np.ndarray] = []
        self.seen = 0

    def add(self, feats: np.ndarray, labels: np.ndarray) -> None:
        n = len(labels)
        self.feats.append(feats)
        self.labels.append(labels)
        self.keys.append(self.rng.random(n))
        self.order.append(np.arange(self.seen, self.seen + n))
        self.seen += n
        if self.limit is not None and sum(len(k) for k in self.keys) > 2 * self.limit:
            self._shrink(self.limit)

    def _shrink(self, limit: int) -> None:
        keys = np.concatenate(self.keys)
        keep = np.argpartition(keys, limit - 1)[:limit] if len(keys) > limit else np.arange(len(keys))
        keep = np.sort(keep)
        self.feats = [np.concatenate(self.feats)[keep]]
        self.labels = [np.concatenate(self.labels)[keep]]
        self.keys, self.order = [keys[keep]], [np.concatenate(self.order)[keep]]

    def result(self, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.labels:
            return np.zeros((0, n_features), np.float32), np.zeros(0, np.int64)
        if self.limit is not None:
            self._shrink(self.limit)
        feats, labels, order = np.concatenate(self.feats), np.concatenate(self.labels), np.concatenate(self.order)
        rank = np.argsort(order, kind="stable")
        return feats[rank], labels[rank]


# --------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------


class PixelGBMMethod(FittedMethod):
    """LightGBM on per-pixel features (``--method pixel-gbm``); see the module docstring.

    :param num_classes: K; the output always has K channels, classes absent from the labels included.
    :param band_names: the cube's band names (C of them).
    :param config: hyper-parameters (defaults when None).
    :param temporal: the inputs are ``(B, T, C, H, W)`` stacks.
    :param seed: seeds bagging, feature sampling and the pixel subsamples.
    :param band_mean: the per-band statistics the loader normalises with (``band_std`` likewise); None: the
        inputs are reflectance.
    """

    name: ClassVar[str] = "pixel-gbm"
    config_class: ClassVar[type] = PixelGBMConfig
    streams: ClassVar[tuple[str, ...]] = ()
    needs_labels: ClassVar[bool] = True
    #: it computes spectral indices from reflectance, so it must undo the loader's normalisation
    needs_band_stats: ClassVar[bool] = True
    step_unit: ClassVar[str] = "boosting rounds"

    def __init__(
        self,
        num_classes: int,
        band_names: Sequence[str],
        config: PixelGBMConfig | None = None,
        *,
        temporal: bool = False,
        seed: int = 0,
        band_mean: Sequence[float] | None = None,
        band_std: Sequence[float] | None = None,
    ) -> None:
        config = config if config is not None else PixelGBMConfig()
        if not isinstance(config, PixelGBMConfig):
            raise TypeError(f"expected a PixelGBMConfig, got {type(config).__name__}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        self.config = config
        self.num_classes = int(num_classes)
        self.band_names = [str(b) for b in band_names]
        self.temporal = bool(temporal)
        self.seed = int(seed)
        self.band_mean = None if band_mean is None else [float(v) for v in band_mean]
        self.band_std = None if band_std is None else [float(v) for v in band_std]
        self.booster: Any = None
        #: the class predicted everywhere when the labels hold a single class (no booster then)
        self.constant_class: int | None = None
        #: the feature columns of the fitted model (checked at prediction)
        self.feature_names: list[str] | None = None
        #: fit statistics (see :meth:`fit`)
        self.stats: dict[str, Any] = {}
        #: validation ``multi_logloss`` per boosting round of the last fit
        self.eval_curve: list[float] = []

    @classmethod
    def build(
        cls,
        in_channels: int,
        num_classes: int,
        *,
        temporal: bool = False,
        config: PixelGBMConfig | None = None,
        seed: int = 0,
        patch_size: int | None = None,
        device: str | torch.device = "cpu",
        band_names: Sequence[str] | None = None,
        band_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> PixelGBMMethod:
        """The method for a cube of ``in_channels`` bands named ``band_names`` (generic names, hence no
        indices, when None), whose loader normalises with ``band_stats = (mean, std)``; the other arguments as in
        :meth:`hvaeseg.methods.base.SegmentationMethod.build` (the booster runs on the CPU; its predictions are
        returned on the input's device)."""
        names = [f"band{i}" for i in range(in_channels)] if band_names is None else list(band_names)
        if len(names) != in_channels:
            raise ValueError(f"band_names: expected {in_channels} names, got {len(names)}")
        mean, std = band_stats if band_stats is not None else (None, None)
        return cls(num_classes, names, config, temporal=temporal, seed=seed, band_mean=mean, band_std=std)

    # -- features ----------------------------------------------------------------------------------
    def features(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> np.ndarray:
        """:func:`pixel_features` with this method's bands, statistics, index and day-of-year settings."""
        if self.config.day_of_year and doy is None:
            raise ValueError("pixel-gbm: this model takes the day of the year of each date; got doy=None "
                             "(set the option day_of_year=false to fit without it)")
        return pixel_features(x, valid, self.band_names, self.band_mean, self.band_std, indices=self.config.indices,
                              doy=doy if self.config.day_of_year else None)

    def _names(self, x: Tensor) -> list[str]:
        return feature_names(self.band_names, x.shape[1] if x.dim() == 5 else 1, indices=self.config.indices,
                             day_of_year=self.config.day_of_year)

    def _collect(
        self, batches: Iterable[PatchBatch], limit: int | None, seed: int
    ) -> tuple[np.ndarray, np.ndarray, int, list[str] | None]:
        """Features and labels of the non-void pixels of ``batches``: ``(X, y, non-void pixels seen, names)``."""
        sample, names = _Subsample(limit, seed), None
        for batch in batches:
            labels = batch.labels.detach().cpu().numpy().reshape(-1)
            keep = labels >= 0
            if names is None:
                names = self._names(batch.x)
            if not keep.any():
                continue
            bad = labels[keep] >= self.num_classes
            if bad.any():
                got = int(labels[keep][bad][0])
                raise ValueError(f"labels: expected classes in [0, {self.num_classes}), got {got}")
            sample.add(self.features(batch.x, batch.valid, batch.doy)[keep], labels[keep].astype(np.int64))
        X, y = sample.result(len(names or ()))
        return X, y, sample.seen, names

    # -- fitting -----------------------------------------------------------------------------------
    def fit(self, labelled: Iterable[PatchBatch], validation: Iterable[PatchBatch] | None = None) -> dict[str, Any]:
        """Fit on every non-void pixel of the ``labelled`` batches (subsampled to ``max_train_pixels``),
        early-stopping on (a subsample of ``max_val_pixels`` of) the non-void pixels of ``validation``.

        :returns: fit statistics: ``train_pixels`` (non-void labelled pixels seen), ``train_rows`` (rows fitted),
            ``val_pixels`` / ``val_rows`` likewise (``val_rows`` counts only the rows of classes present in the
            labels: the others, ``val_rows_unseen_class``, cannot be predicted and are left out of the
            early-stopping criterion), ``classes_present``, ``features``, ``iterations`` (boosting
            rounds kept, the best one), ``rounds_run``, ``best_logloss``, ``fit_seconds`` (the whole call:
            reading the batches, features and boosting) and ``boost_seconds``.
        """
        lgb = _lightgbm()
        cfg = self.config
        start = time.perf_counter()
        X, y, n_train, names = self._collect(labelled, cfg.max_train_pixels, self.seed)
        if len(y) == 0:
            raise ValueError("pixel-gbm: the labelled patches hold no labelled (non-void) pixel to fit on")
        assert names is not None  # named by the first batch: there was one, since y is not empty
        if validation is not None:
            Xv, yv, n_val, _ = self._collect(validation, cfg.max_val_pixels, self.seed + 1)
        else:
            Xv, yv, n_val = np.zeros((0, X.shape[1]), np.float32), np.zeros(0, np.int64), 0
        present = sorted(int(c) for c in np.unique(y))
        # validation pixels of classes absent from the labels cannot be predicted: their log-loss only grows as
        # the model learns, and would stop it early, so the early-stopping criterion leaves them out
        known = np.isin(yv, present)
        Xv, yv, val_unseen = Xv[known], yv[known], int((~known).sum())
        self.feature_names = names
        self.booster, self.constant_class, self.eval_curve = None, None, []
        boost_start = time.perf_counter()
        rounds_run, best, best_loss = 0, 0, None
        if len(present) == 1:
            self.constant_class = present[0]
        else:
            params = cfg.lightgbm_params(self.num_classes, self.seed)
            train_set = lgb.Dataset(X, label=y, feature_name=names, free_raw_data=True)
            callbacks, valid_sets = [], []
            evals: dict[str, dict[str, list[float]]] = {}
            if len(yv):
                valid_sets = [lgb.Dataset(Xv, label=yv, reference=train_set, free_raw_data=True)]
                callbacks = [lgb.early_stopping(cfg.early_stopping_rounds, first_metric_only=True, verbose=False),
                             lgb.record_evaluation(evals)]
            booster = lgb.train(params, train_set, num_boost_round=cfg.max_trees, valid_sets=valid_sets,
                                valid_names=["val"] * len(valid_sets), callbacks=callbacks)
            # lgb.train returns the booster cut at its best round; the curve tells how many rounds ran
            best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
            rounds_run = booster.current_iteration()
            if evals:
                self.eval_curve = [float(v) for v in evals["val"]["multi_logloss"]]
                rounds_run, best_loss = len(self.eval_curve), self.eval_curve[best - 1]
            # keep exactly what a saved state restores: the best rounds, re-read from the model string
            self.booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
        end = time.perf_counter()
        self.stats = {
            "train_pixels": int(n_train), "train_rows": int(len(y)), "val_pixels": int(n_val), "val_rows": int(len(yv)),
            "val_rows_unseen_class": val_unseen,
            "classes_present": present, "features": len(names), "iterations": int(best), "rounds_run": int(rounds_run),
            "best_logloss": best_loss, "fit_seconds": end - start, "boost_seconds": end - boost_start,
        }
        return dict(self.stats)

    # -- prediction --------------------------------------------------------------------------------
    def predict_proba(self, x: Tensor, valid: Tensor, doy: Tensor | None = None) -> Tensor:
        """Class probabilities ``(B, K, H, W)`` float32 on ``x``'s device (rows sum to 1)."""
        if self.booster is None and self.constant_class is None:
            raise RuntimeError("pixel-gbm: the method is not fitted; call fit() or load_state_dict() first")
        names = self._names(x)
        if self.feature_names is not None and names != self.feature_names:
            raise ValueError(f"pixel-gbm: the model was fitted on the features {self.feature_names}, these inputs "
                             f"give {names} (other bands or another number of dates)")
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        K = self.num_classes
        if self.booster is None:
            p = np.zeros((B * H * W, K), np.float32)
            p[:, self.constant_class] = 1.0
        elif B * H * W == 0:
            p = np.zeros((0, K), np.float32)
        else:
            kwargs = {} if self.config.threads is None else {"num_threads": self.config.threads}
            p = np.asarray(
                self.booster.predict(self.features(x, valid, doy), **kwargs), dtype=np.float32
            ).reshape(-1, K)
        out = torch.from_numpy(np.ascontiguousarray(p.reshape(B, H, W, K).transpose(0, 3, 1, 2)))
        return out.to(x.device)

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (the booster as its model string): ``torch.load(weights_only=True)`` reads it."""
        return {
            "kind": "pixel-gbm",
            "model": None if self.booster is None else self.booster.model_to_string(),
            "constant_class": self.constant_class,
            "config": asdict(self.config),
            "num_classes": self.num_classes,
            "band_names": list(self.band_names),
            "band_mean": self.band_mean,
            "band_std": self.band_std,
            "temporal": self.temporal,
            "seed": self.seed,
            "feature_names": self.feature_names,
            "stats": dict(self.stats),
            "eval_curve": list(self.eval_curve),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The band statistics given at construction (how the current inputs are
        normalised) are kept; the saved ones are used only when there are none."""
        if state.get("kind") != "pixel-gbm":
            raise ValueError(f"expected a pixel-gbm state, got one of kind {state.get('kind')!r}")
        if int(state["num_classes"]) != self.num_classes or list(state["band_names"]) != self.band_names:
            raise ValueError(
                f"this pixel-gbm state was fitted for {state['num_classes']} classes and bands {state['band_names']}, "
                f"this method has {self.num_classes} classes and bands {self.band_names}"
            )
        known = {f.name for f in fields(PixelGBMConfig)}
        self.config = PixelGBMConfig(**{k: v for k, v in state["config"].items() if k in known})
        self.temporal, self.seed = bool(state["temporal"]), int(state["seed"])
        if self.band_mean is None and self.band_std is None:
            self.band_mean, self.band_std = state["band_mean"], state["band_std"]
        self.booster = None
        if state["model"] is not None:
            self.booster = _lightgbm().Booster(model_str=state["model"])
        self.constant_class = None if state["constant_class"] is None else int(state["constant_class"])
        self.feature_names = None if state["feature_names"] is None else list(state["feature_names"])
        self.stats = dict(state.get("stats", {}))
        self.eval_curve = list(state.get("eval_curve", []))
