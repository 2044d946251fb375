"""The configuration of a run (:class:`RunConfig`), torch-free: the command line reads its defaults and help
from here, so ``hvaeseg train --help`` and the saved ``config.json`` cannot disagree.

Where a run folder's ``config.json`` names its cube by a path, the path is absolute
(:meth:`RunConfig.with_absolute_data`), so a run evaluates from any working folder; runs written before that kept
the path as typed, and :meth:`RunConfig.load` finds such a cube under the current folder or above the run folder.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hvaeseg._dataclass_io import check_fields, from_dict

if TYPE_CHECKING:
    from hvaeseg.experiment import RunData

SYNTHETIC_PREFIX = "synthetic:"

#: fields a rerun may change to train a run on (see :meth:`RunConfig.differences`)
EXTENDABLE = ("steps", "time_budget_s")

#: fields whose command-line flag is not ``--`` + the name with dashes
_FLAGS = {"time_budget_s": "--time-budget"}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run (saved as ``config.json`` in the run folder).

    Each ``:param:`` below is also the ``hvaeseg train --help`` text of the field's flag (:func:`flag`).

    :param method: the training method, a name in the registry :data:`hvaeseg.methods.METHODS`.
    :param data: the cube: a store path, an fsspec URL or synthetic:PRESET (the built-in synthetic cube,
        generated in memory).
    :param labels: N, the number of labelled training locations (patch-size tiles of the training blocks).
    :param steps: optimisation steps in total; a rerun with more steps trains the run on from its checkpoint
        (pixel-gbm chooses its size by early stopping and does not use it).
    :param seed: training seed (initialisation, sampling, augmentation, batch order).
    :param data_seed: seed of the spatial split, the labelled subset and the patch plans (and of a synthetic
        cube): keep it fixed to compare methods and training seeds on the same data.
    :param batch_size: patches per stream per step.
    :param patch_size: side of the square patches in pixels.
    :param dates: dates per patch: 1 for single-date patches, T > 1 for T-date stacks (temporal models).
    :param unlabelled_patches: random training patches drawn for the unlabelled stream.
    :param block: side of the square blocks of the spatial train/val/test split, in pixels (at least the
        patch size).
    :param fractions: train, val and test shares of the blocks (summing to 1).
    :param min_valid: a date qualifies for a patch when this share of its pixels is clear.
    :param val_every: validate every this many steps (0: only at the end).
    :param checkpoint_every: write checkpoint.pt every this many steps (0: only at the end).
    :param time_budget_s: stop training after this many seconds of training in total, over every rerun of
        the run (benchmarks compare at equal time); none by default; not used by pixel-gbm.
    :param device: cpu, cuda or cuda:N.
    :param precision: fp32, or bf16: mixed precision, convolutions in bfloat16 (hvaeseg.nets.precision), 1.6-2x
        faster steps where the device has bfloat16 units (AVX512-BF16/AMX CPUs, Ampere and later GPUs).
    :param options: method hyper-parameters as a JSON object (fields of the method's config dataclass).
    """

    method: str
    data: str = "synthetic:small"
    labels: int = 10
    steps: int = 1000
    seed: int = 0
    data_seed: int = 0
    batch_size: int = 8
    patch_size: int = 64
    dates: int = 1
    unlabelled_patches: int = 2048
    block: int = 128
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    min_valid: float = 0.5
    val_every: int = 100
    checkpoint_every: int = 100
    time_budget_s: float | None = None
    device: str = "cpu"
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from hvaeseg.methods import METHODS

        if self.method not in METHODS:
            raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("steps", "batch_size", "patch_size", "dates", "unlabelled_patches", "block"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{flag(name)}: expected a positive integer, got {value!r}")
        for name in ("labels", "seed", "data_seed", "val_every", "checkpoint_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{flag(name)}: expected an integer >= 0, got {value!r}")
        if self.labels == 0 and METHODS[self.method].needs_labels:
            raise ValueError(f"method {self.method!r} needs labelled locations: give --labels N with N >= 1")
        if self.block < self.patch_size:
            raise ValueError(f"--block {self.block} is smaller than --patch-size {self.patch_size}: pass a --block of "
                             f"at least {self.patch_size}, or a smaller --patch-size")
        fr = tuple(float(f) for f in self.fractions)
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
            raise ValueError(f"--fractions: expected three non-negative train/val/test shares summing to 1, got {fr}")
        object.__setattr__(self, "fractions", fr)
        if not 0 <= self.min_valid <= 1:
            raise ValueError(f"--min-valid: expected a fraction in [0, 1], got {self.min_valid}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"--time-budget: expected a positive number of seconds, got {self.time_budget_s}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"--device: expected 'cpu' or 'cuda' (or 'cuda:N'), got {self.device!r}")
        from hvaeseg.nets.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.options, dict):
            raise ValueError(f"--options: expected a JSON object, got {type(self.options).__name__}")

    def check_device(self) -> None:
        """Refuse a CUDA device that torch cannot see (checked when a run is trained or loaded to run here, not
        when its config is read: a GPU-trained run can be evaluated on a CPU machine with ``device='cpu'``)."""
        import torch

        from hvaeseg.nets.precision import check_precision

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but torch sees no CUDA device: use --device cpu")
        check_precision(self.precision, self.device)

    def with_absolute_data(self) -> RunConfig:
        """This config with ``data`` as an absolute path (as a run folder stores it); ``synthetic:PRESET`` and
        URLs are kept as they are."""
        return replace(self, data=absolute_data(self.data))

    def differences(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """``{field: (value here, value in other)}`` for the fields in which ``other`` differs (a ``data`` path
        compared as an absolute path); :func:`describe` says them by their flags."""
        a, b = asdict(self.with_absolute_data()), asdict(other.with_absolute_data())
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return from_dict(cls, json.loads(text), "config.json", hint="this run was written by another version")

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunConfig:
        """The config of a run folder, with a cube path made absolute: a relative one (written before run folders
        stored absolute paths) is looked for under the current folder, then above the run folder (see
        :func:`locate_data`); kept as it is when found nowhere (opening it then says where it looked)."""
        path = Path(run_dir) / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json): run `hvaeseg train` first")
        config = cls.from_json(path.read_text())
        try:
            return replace(config, data=locate_data(config.data, run_dir))
        except FileNotFoundError:
            return config

    @property
    def sizes(self) -> dict[str, int]:
        sizes = {"y": self.patch_size, "x": self.patch_size}
        if self.dates > 1:
            sizes["time"] = self.dates
        return sizes


@dataclass(frozen=True)
class LoaderOptions:
    """How training batches are read; no effect on the results (a batch depends on ``(seed, step)`` only).

    :param workers: loader threads (or processes) per training stream.
    :param processes: worker processes instead of threads (needs the cube in a store; see
        :class:`~hvaeseg.data.loader.PatchLoader`): for GPU training, where the loader must not share the
        training loop's GIL.
    """

    workers: int = 1
    processes: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.workers) or self.workers < 1:
            raise ValueError(f"--loader-workers: expected an integer >= 1, got {self.workers!r}")

    def check(self, data: RunData, config: RunConfig) -> None:
        """Refuse processes for a cube that is not in a store."""
        if self.processes and not isinstance(data.cube, (str, os.PathLike)):
            preset = config.data.removeprefix(SYNTHETIC_PREFIX)
            raise ValueError(
                f"loader processes read the cube from its store, and {config.data} is generated in memory: write it "
                f"first (`hvaeseg data synth OUT.zarr --preset {preset} --seed {config.data_seed}`) and train with "
                "--data OUT.zarr, or drop --loader-processes"
            )


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The :class:`RunConfig` fields of a YAML or JSON file (``hvaeseg train --config``): the keys of a run's
    ``config.json`` (method options as a mapping under ``options``), any of them left out. ``.json`` files are
    read as JSON, others as YAML. The values are checked by type here (``labels: "10"`` is refused naming the
    file); their ranges when the run's config is made of them and of the flags.

    :raises FileNotFoundError: no such file.
    :raises ValueError: a folder, not YAML/JSON, not a mapping, an unknown key (named, with the known ones), or a
        value of the wrong type; each message names the file.
    """
    import yaml

    from hvaeseg.options import check_option_types

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--config: no file at {str(path)!r}: give a .yaml or .json file of run settings "
                                "(the fields of a run's config.json)")
    if path.is_dir():
        raise ValueError(f"--config: {str(path)!r} is a folder: expected a .yaml or .json file (a run folder's "
                         "settings are its config.json)")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid {'JSON' if path.suffix == '.json' else 'YAML'} file of run "
                         f"settings ({' '.join(str(err).split())})") from None
    if data is None:  # an empty file: nothing set
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of run settings (field: value), got a {type(data).__name__}")
    check_fields(RunConfig, data, str(path), hint="--out and the loader flags are given on the command line")
    check_option_types(RunConfig, data, str(path), fix="write numbers and true/false unquoted (YAML reads 1e-3 as "
                                                       "text: write 1.0e-3 or 0.001)")
    return data


def flag(name: str) -> str:
    """The ``hvaeseg train`` flag of a :class:`RunConfig` field: ``--time-budget`` for ``time_budget_s``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def default(name: str) -> Any:
    """The default of a :class:`RunConfig` field (``MISSING`` for ``method``)."""
    f = {f.name: f for f in fields(RunConfig)}[name]
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def field_help(name: str) -> str:
    """The documentation of a :class:`RunConfig` field (its ``:param:`` entry), as plain text without the final
    full stop."""
    return _param_docs()[name].removesuffix(".")


def _param_docs() -> dict[str, str]:
    doc = RunConfig.__doc__ or ""
    out: dict[str, str] = {}
    for match in re.finditer(r":param (\w+):(.*?)(?=\n\s*:param |\Z)", doc, flags=re.S):
        text = " ".join(match.group(2).split())
        text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)  # :class:`~a.b.C` -> C
        out[match.group(1)] = text.replace("``", "")
    return out


def describe(differences: dict[str, tuple[Any, Any]]) -> str:
    """``--labels 2 -> 3, --block 64 -> 128``: :meth:`RunConfig.differences` by flag."""
    return ", ".join(f"{flag(k)} {_show(a)} -> {_show(b)}" for k, (a, b) in differences.items())


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def is_path(data: str) -> bool:
    """Whether ``data`` names a cube by a local path (not ``synthetic:PRESET`` nor a URL)."""
    return not (data.startswith(SYNTHETIC_PREFIX) or "://" in data)


def absolute_data(data: str) -> str:
    """``data`` with a local path made absolute; ``synthetic:PRESET`` and URLs unchanged."""
    return os.path.abspath(os.path.expanduser(data)) if is_path(data) else data


def locate_data(data: str, run_dir: str | os.PathLike) -> str:
    """The cube ``data`` of the run folder ``run_dir``: an absolute path, URL or ``synthetic:PRESET`` as it is; a
    relative path (config.json of an older version) under the current folder, else under the run folder's
    parent or a folder above it (where the run was trained from, most likely), as an absolute path.

    :raises FileNotFoundError: a relative path found nowhere; the message says where it looked.
    """
    if not is_path(data) or os.path.isabs(data):
        return data
    places = [Path.cwd(), *Path(run_dir).absolute().parents]
    for place in places:
        if (place / data).exists():
            return str(place / data)
    raise FileNotFoundError(
        f"{Path(run_dir) / 'config.json'} names its cube by the relative path {data!r}, found neither under the "
        f"current folder nor above the run folder: run from the folder it was trained in, or write the cube's "
        "absolute path as \"data\" in that config.json"
    )
