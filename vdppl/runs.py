"""Run directories: what ``vdppl train`` writes and ``evaluate`` / ``report`` read.

A run directory holds ``config.json`` (every setting, library versions, seed),
``checkpoint`` (resumable; replaced atomically after every epoch), ``history.csv`` (one
row per epoch), ``metrics.json``, ``idata.nc`` (ArviZ netCDF), ``report.html`` and the
PNG plots; ``vdppl evaluate`` adds ``evaluation*.json`` and ``ood-*.npz``. Files are
written atomically (:func:`atomic_write`) with the permissions a plain ``open()`` gives.
Nothing here imports a backend.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdppl import _io

__all__ = [
    "BACKENDS",
    "CHECKPOINT",
    "CONFIG",
    "HISTORY",
    "IDATA",
    "METHODS",
    "METRICS",
    "REPORT",
    "RUN_FILES",
    "Config",
    "atomic_write",
    "check_pretrained",
    "check_run_dir",
    "guide_options",
    "kl_weight_at",
    "lr_factor_at",
    "prepare_run_dir",
    "read_history",
    "read_json",
    "write_history",
    "write_idata",
    "write_json",
]

CONFIG, CHECKPOINT, HISTORY = "config.json", "checkpoint", "history.csv"
METRICS, IDATA, REPORT = "metrics.json", "idata.nc", "report.html"
#: Names (glob patterns) of the files vdppl writes in a run directory: ``train``,
#: ``evaluate`` (evaluation*.json, ood-*.npz) and ``report`` (the PNG plots), and the
#: temporary files of an interrupted atomic write (``.<name>.<random>.tmp``).
RUN_FILES = (
    CONFIG,
    CHECKPOINT,
    HISTORY,
    METRICS,
    IDATA,
    REPORT,
    "evaluation.json",
    "evaluation-*.json",
    "ood-*.npz",
    "training.png",
    "sparsity.png",
    "log_alpha.png",
    "mask.png",
    "reliability.png",
    "ppc.png",
    "entropy-*.png",
)

BACKENDS = ("pyro", "numpyro")
#: sparse-vd: Molchanov et al. 2017; vd-a / vd-b: Kingma et al. 2015 (per input unit /
#: per weight alpha <= 1); gaussian-dropout: alpha fixed at p / (1 - p); map: point
#: estimates under a Normal prior; gradreg: Unlu & Aitchison 2020.
METHODS = ("sparse-vd", "vd-a", "vd-b", "gaussian-dropout", "map", "gradreg")


@dataclass
class Config:
    """Every setting of a training run (the CLI's options), saved as ``config.json``."""

    backend: str = "pyro"
    dataset: str = "digits"
    data_root: str | None = None
    arch: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [100, 100])
    method: str = "sparse-vd"
    epochs: int = 60
    batch_size: int = 100
    lr: float = 3e-3
    lr_schedule: str = "constant"
    variance_lr: float | None = None
    warmup: int = 30
    warmup_start: int = 0
    threshold: float = 3.0
    seed: int = 0
    init_log_sigma2: float = -10.0
    dropout_p: float = 0.5
    map_prior_scale: float = 1.0
    obs_noise: str = "learned"
    eval_samples: int = 100
    limit_train: int | None = None
    limit_test: int | None = None
    pretrained: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def validate(self) -> Config:
        """Raise ``ValueError`` naming the option and its valid values."""
        if self.backend not in BACKENDS:
            raise ValueError(
                f"--backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}"
            )
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.lr_schedule not in ("constant", "paper"):
            raise ValueError(f"--lr-schedule must be constant or paper; got {self.lr_schedule!r}")
        for name in ("epochs", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.warmup < 0:
            raise ValueError("--warmup must be >= 0 (epochs of KL warm-up)")
        if self.warmup_start < 0 or (self.warmup_start and self.warmup_start >= self.warmup):
            raise ValueError(
                f"--warmup-start must be >= 0 and below --warmup ({self.warmup}): the KL "
                f"weight is 0 before it and reaches 1 at --warmup; got {self.warmup_start}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number; got {self.lr}")
        if self.variance_lr is not None and not (
            math.isfinite(self.variance_lr) and self.variance_lr > 0
        ):
            raise ValueError(
                f"--variance-lr must be a positive number (or left out: --lr); got "
                f"{self.variance_lr}"
            )
        if not 0 < self.dropout_p < 1:
            raise ValueError(f"--dropout-p must be in (0, 1); got {self.dropout_p}")
        if self.obs_noise != "learned":
            try:
                noise = float(self.obs_noise)
            except ValueError:
                noise = -1.0
            if not (math.isfinite(noise) and noise > 0):
                raise ValueError(
                    f"--obs-noise must be 'learned' or a positive number; got {self.obs_noise!r}"
                )
        from vdppl.kl import check_threshold

        check_threshold(self.threshold)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def check_pretrained(run: str | os.PathLike, config: Config) -> Path:
    """The checkpoint of ``--pretrained RUN``, which must be a run of the same dataset,
    architecture (and hidden sizes) and backend as ``config``."""
    run = Path(run)
    other = Config.from_dict(read_json(run / CONFIG))
    mismatch = [
        k
        for k in ("dataset", "arch", "hidden", "backend")
        if getattr(other, k) != getattr(config, k)
    ]
    if mismatch:
        raise ValueError(f"--pretrained {run} differs in {', '.join(mismatch)}")
    return run / CHECKPOINT


def guide_options(config: Config) -> dict[str, Any]:
    """``AutoVariationalDropout`` options of ``config.method`` (the same in both backends).

    sparse-vd and gradreg: additive noise with ``log sigma^2`` starting at
    ``init_log_sigma2`` (Molchanov et al. 2017); vd-a / vd-b: multiplicative noise with
    alpha <= 1 per input unit / per weight (Kingma et al. 2015); gaussian-dropout: alpha
    fixed at ``p / (1 - p)``. Not used for map (a point estimate).
    """
    if config.method in ("sparse-vd", "gradreg"):
        return {"noise": "additive", "init_log_sigma2": config.init_log_sigma2}
    if config.method == "vd-a":
        return {"noise": "multiplicative", "alpha_shape": "unit"}
    if config.method == "vd-b":
        return {"noise": "multiplicative", "alpha_shape": "weight"}
    return {"fixed_alpha": config.dropout_p / (1 - config.dropout_p)}


def kl_weight_at(epoch: int, warmup: int, start: int = 0) -> float:
    """KL warm-up: 0 until epoch ``start``, then linear to 1 at epoch ``warmup``::

        beta = clip((epoch - start) / (warmup - start), 0, 1)     (1 if warmup <= 0)

    ``start=0`` is a linear ramp from 0 at the first epoch; the sparse VD paper's code
    uses ``start=5, warmup=20`` (Molchanov et al. 2017, arXiv:1701.05369).
    """
    if warmup <= 0:
        return 1.0
    return min(1.0, max(0.0, (epoch - start) / (warmup - start)))


def lr_factor_at(epoch: int, epochs: int, schedule: str) -> float:
    """Learning-rate multiplier: 1, or the sparse VD paper's constant for the first half
    then linear to 0 at the end (``"paper"``)."""
    if schedule == "constant":
        return 1.0
    half = epochs // 2
    return 1.0 if epoch < half else max(0.0, (epochs - epoch) / max(1, epochs - half))


def _is_run_file(path: Path) -> bool:
    """Whether ``path`` is a file that vdppl writes in a run directory (:data:`RUN_FILES`)."""
    if path.is_dir() and not path.is_symlink():
        return False
    name = path.name
    if name.startswith(".") and name.endswith(".tmp"):  # .<name>.<random>.tmp
        name = name[1:].rsplit(".", 2)[0]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def check_run_dir(out: str | os.PathLike, force: bool = False) -> list[Path]:
    """The files that ``prepare_run_dir(out, force)`` would delete; raise
    ``FileExistsError`` (saying what to do) if it would refuse. Deletes nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another --out")
    entries = sorted(path.iterdir()) if path.is_dir() else []
    if not entries:
        return []
    if not (path / CONFIG).is_file():
        shown = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(
            f"{path} is not empty ({shown}) and has no {CONFIG}, so it is not a vdppl run "
            "directory: --force only replaces a previous run. Choose a new or empty --out."
        )
    if not force:
        raise FileExistsError(
            f"{path} already holds a run; pass --force to overwrite it, --resume {path} to "
            "continue it, or choose another --out"
        )
    foreign = [p for p in entries if not _is_run_file(p)]
    if foreign:
        shown = ", ".join(p.name for p in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{path} holds files that vdppl did not write ({shown}); --force deletes only a "
            "run's own files. Move them out of the run directory, or choose another --out."
        )
    return entries


def prepare_run_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Create the run directory. An existing non-empty one is an error unless ``force``;
    with ``force`` the previous run's files (:data:`RUN_FILES`) are deleted, so the
    directory holds only the new run's. A non-empty directory without ``config.json``, or
    one holding any other file, is never touched (``FileExistsError``)."""
    path = Path(out)
    for stale in check_run_dir(path, force):
        stale.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


#: Files written whole or not at all, with the mode ``open()`` would give them.
atomic_write = _io.atomic_write


def write_json(path: Path, data: dict) -> Path:
    """Strict JSON (no ``NaN`` or ``Infinity``: a non-finite number is written ``null``)."""
    text = json.dumps(
        _finite(data), indent=2, sort_keys=True, default=_json_default, allow_nan=False
    )
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def _finite(value):
    """``value`` with NumPy scalars and arrays as Python values and NaN / infinities as None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {path.parent} a vdppl run directory?")
    return json.loads(path.read_text())


def write_history(path: Path, rows: list[dict[str, float]]) -> Path:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buffer.getvalue()))


def write_idata(path: Path, idata) -> Path:
    """``idata.to_netcdf``, atomically: a reader never sees a partly written ``idata.nc``."""
    return atomic_write(path, lambda tmp: idata.to_netcdf(tmp))


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
