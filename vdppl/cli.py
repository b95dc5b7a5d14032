"""The ``vdppl`` command: ``train``, ``evaluate``, ``report``, ``bench``.

``vdppl train`` with no arguments fits sparse variational dropout to scikit-learn's
digits with Pyro (offline, well under a minute) and prints where the report is.
``vdppl bench variance|speed|sparsify|gradreg`` reproduces the papers' measurements
(:mod:`vdppl.bench`).
Exit codes: 0 success, 1 a runtime error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

import numpy as np

from vdppl import runs
from vdppl.runs import Config

__all__ = ["main"]


class UsageError(Exception):
    """Bad options: exit code 2."""


#: Top-level packages that each backend's extra installs.
_EXTRA_PACKAGES = {
    "pyro": ("torch", "pyro"),
    "numpyro": ("jax", "jaxlib", "numpyro", "flax", "optax"),
}


def _missing_module(err: BaseException | None) -> str | None:
    """Top-level name of the module whose absence raised ``err``, following ``raise ...
    from`` (``vdppl._optional.require`` re-raises with the install hint)."""
    while err is not None:
        if isinstance(err, ImportError) and err.name:
            return err.name.split(".")[0]
        err = err.__cause__
    return None


def _trainer_class(backend: str):
    """The backend's ``Trainer``; a missing backend package is a usage error naming the
    extra, any other ImportError (a bug) propagates."""
    module = {"pyro": "vdppl.pyro.train", "numpyro": "vdppl.numpyro.train"}[backend]
    try:
        return importlib.import_module(module).Trainer
    except ImportError as err:
        if _missing_module(err) not in _EXTRA_PACKAGES[backend]:
            raise
        raise UsageError(
            f"--backend {backend} needs its extra: pip install 'vdppl[{backend}]' ({err})"
        ) from err


def _load_dataset(config: Config, name: str | None = None):
    from vdppl import data

    name = name or config.dataset
    if name not in data.DATASETS:
        raise UsageError(
            f"unknown dataset {name!r}; choose one of {', '.join(sorted(data.DATASETS))}"
        )
    ds = data.load(name, root=config.data_root, seed=config.seed)
    return _limited(ds, config.limit_train, config.limit_test)


def _limited(ds, n_train: int | None, n_test: int | None):
    """The first ``n_train`` / ``n_test`` examples (for quick runs and tests)."""
    import dataclasses

    return dataclasses.replace(
        ds,
        x_train=ds.x_train[:n_train],
        y_train=ds.y_train[:n_train],
        x_test=ds.x_test[:n_test],
        y_test=ds.y_test[:n_test],
    )


def _versions(backend: str) -> dict[str, str]:
    from vdppl.diagnostics.inference_data import library_versions

    extra = ("torch", "pyro-ppl") if backend == "pyro" else ("jax", "numpyro", "flax")
    return library_versions(*extra)


# --------------------------------------------------------------------- train
def _config_from_args(args) -> Config:
    from vdppl.models import ARCHITECTURES

    if args.arch not in ARCHITECTURES:
        raise UsageError(
            f"unknown architecture {args.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    config = Config(
        backend=args.backend,
        dataset=args.dataset,
        data_root=args.data_root,
        arch=args.arch,
        hidden=list(args.hidden),
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_schedule=args.lr_schedule,
        variance_lr=args.variance_lr,
        warmup=args.warmup if args.warmup is not None else args.epochs // 2,
        warmup_start=args.warmup_start,
        threshold=args.threshold,
        seed=args.seed,
        init_log_sigma2=args.init_log_sigma2,
        dropout_p=args.dropout_p,
        map_prior_scale=args.map_prior_scale,
        obs_noise=args.obs_noise,
        eval_samples=args.eval_samples,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        pretrained=args.pretrained,
    )
    try:
        return config.validate()
    except ValueError as err:
        raise UsageError(str(err)) from err


def train(args) -> int:
    if args.resume:
        return _resume(args)
    config = _config_from_args(args)
    out = Path(args.out) if args.out else _default_out(config)
    runs.check_run_dir(out, force=args.force)  # refuse early, before loading anything
    dataset = _load_dataset(config)
    _check_combination(config, dataset)
    _check_pretrained(config)
    trainer = _trainer_class(config.backend)(config, dataset)
    # only now, with every option checked: a bad one leaves no directory (nor, with
    # --force, deletes the previous run)
    out = runs.prepare_run_dir(out, force=args.force)
    config.versions = _versions(config.backend)
    runs.write_json(out / runs.CONFIG, config.to_dict())
    history: list[dict] = []
    _fit(trainer, config, dataset, out, history, 0, quiet=args.quiet)
    return _finish(trainer, config, dataset, out, history, args.quiet)


def _resume(args) -> int:
    """``--resume DIR``: continue to ``config.epochs`` (or a larger ``--epochs``); a run
    that has trained all its epochs is left as it is."""
    out = Path(args.resume)
    config = Config.from_dict(runs.read_json(out / runs.CONFIG))
    saved_epochs = config.epochs
    if args.epochs_given:
        if args.epochs < 1:
            raise UsageError("--epochs must be >= 1")
        config.epochs = args.epochs  # before the Trainer: its schedule depends on it
    dataset = _load_dataset(config)
    trainer = _trainer_class(config.backend)(config, dataset)
    extra = trainer.load(out / runs.CHECKPOINT)
    history, done = extra["history"], extra["epoch"]
    if config.epochs < done:
        raise UsageError(
            f"{out} has trained {done} epochs already; --epochs {config.epochs} would shorten "
            f"it. Pass --epochs {done + 1} or more to continue it, or leave --epochs out."
        )
    if done == config.epochs and (out / runs.METRICS).is_file():
        print(
            f"{out} is complete: {done} of {config.epochs} epochs trained, nothing to do. "
            f"Pass --resume {out} --epochs N with N > {done} to train it further."
        )
        return 0
    if config.epochs != saved_epochs:
        runs.write_json(out / runs.CONFIG, config.to_dict())
    _fit(trainer, config, dataset, out, history, done, quiet=args.quiet)
    return _finish(trainer, config, dataset, out, history, args.quiet)


def _finish(trainer, config, dataset, out, history, quiet) -> int:
    metrics = evaluate_run(trainer, config, dataset, out, history, quiet=quiet)
    from vdppl.report import build_report

    report = build_report(out)
    if not quiet:
        print(_summary(metrics))
    print(f"report: {report}")
    return 0


#: Task and input shape of each dataset, as documented in :mod:`vdppl.data`: only to
#: suggest datasets in messages (the checks use the loaded data).
_DATASET_INFO = {
    "digits": ("classification", (1, 8, 8)),
    "mnist5k": ("classification", (1, 28, 28)),
    "fashion-mnist": ("classification", (1, 28, 28)),
    "mnist": ("classification", (1, 28, 28)),
    "cifar10": ("classification", (3, 32, 32)),
    "toy1d": ("regression", (1,)),
    "boston": ("regression", (13,)),
    "diabetes": ("regression", (10,)),
}


def _arch_problem(arch: str, input_shape: tuple[int, ...]) -> str | None:
    """Why ``arch`` cannot take examples of ``input_shape`` (channels first), or None:
    the shape arithmetic of its convolutions and poolings, without a backend."""
    from vdppl import models

    shape = tuple(input_shape)
    for spec in models.architecture(arch, 1):
        if isinstance(spec, (models.Conv, models.MaxPool)):
            if len(shape) != 3:
                return f"it needs image inputs (channels, height, width), not shape {shape}"
            channels, *hw = shape
            if isinstance(spec, models.Conv):
                channels = spec.features
                hw = [(d + 2 * spec.padding - spec.kernel) // spec.stride + 1 for d in hw]
            else:
                hw = [d // spec.size for d in hw]
            if min(hw) < 1:
                return f"its {spec} leaves nothing of {input_shape[1]}x{input_shape[2]} images"
            shape = (channels, *hw)
        elif isinstance(spec, models.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(spec, models.Dense):
            shape = (spec.features,)
    return None


def _check_combination(config: Config, dataset) -> None:
    """Architecture vs the dataset's inputs, and task-specific options, before anything
    is written."""
    from vdppl.models import ARCHITECTURES

    problem = _arch_problem(config.arch, dataset.input_shape)
    if problem:
        archs = [a for a in ARCHITECTURES if _arch_problem(a, dataset.input_shape) is None]
        datasets = [
            d
            for d, (_, shape) in _DATASET_INFO.items()
            if _arch_problem(config.arch, shape) is None
        ]
        raise UsageError(
            f"--arch {config.arch} does not fit --dataset {config.dataset} (inputs of shape "
            f"{tuple(dataset.input_shape)}): {problem}. Architectures for {config.dataset}: "
            f"{', '.join(archs)}; datasets for {config.arch}: {', '.join(datasets)}"
        )
    if dataset.task == "classification" and config.obs_noise != "learned":
        raise UsageError(
            f"--obs-noise is for regression datasets ({', '.join(_datasets_of('regression'))}); "
            f"{config.dataset} is a classification dataset: leave --obs-noise out"
        )


def _datasets_of(task: str) -> list[str]:
    return [d for d, (t, _) in _DATASET_INFO.items() if t == task]


def _check_pretrained(config: Config) -> None:
    """``--pretrained RUN`` must be a run directory of the same dataset, architecture,
    hidden sizes and backend."""
    if config.pretrained:
        try:
            runs.check_pretrained(config.pretrained, config)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(
                f"{err}; --pretrained needs a run of the same --dataset, --arch, --hidden "
                "and --backend (e.g. one trained with --method map)"
            ) from err


def _default_out(config: Config) -> Path:
    """``runs/<dataset>-<arch>-<method>-<backend>``, numbered so no run is overwritten."""
    base = Path("runs") / f"{config.dataset}-{config.arch}-{config.method}-{config.backend}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _fit(trainer, config, dataset, out, history, start, quiet):
    from tqdm.auto import tqdm

    bar = tqdm(
        range(start, config.epochs),
        initial=start,
        total=config.epochs,
        disable=quiet,
        desc="train",
        unit="epoch",
    )
    for epoch in bar:
        row = trainer.epoch(epoch)
        outputs = trainer.pruned_outputs(dataset.x_test)
        row["epoch"] = epoch + 1
        row["compression"] = trainer.sparsity().compression
        if dataset.task == "classification":
            row["test_accuracy"] = float(np.mean(outputs.argmax(-1) == dataset.y_test))
        else:
            row["test_rmse"] = float(
                np.sqrt(np.mean((outputs - dataset.y_test) ** 2)) * dataset.y_std
            )
        history.append(row)
        trainer.save(out / runs.CHECKPOINT, epoch=epoch + 1, history=history)
        runs.write_history(out / runs.HISTORY, history)
        score = row.get("test_accuracy", row.get("test_rmse"))
        bar.set_postfix(
            elbo=f"{-row['loss']:.3f}",
            data=f"{row['data']:.3f}",
            kl=f"{row['kl']:.3f}",
            test=f"{score:.3f}",
            x=f"{row['compression']:.1f}",
        )


def evaluate_run(trainer, config, dataset, out, history, quiet=True) -> dict:
    """Final metrics, InferenceData and plots of a trained run."""
    from vdppl.diagnostics import loo, metrics

    report = trainer.sparsity()
    outputs = trainer.pruned_outputs(dataset.x_test)
    train_seconds = sum(row["seconds"] for row in history)
    result = {
        "compression": report.compression,
        "kept_weights": report.kept,
        "total_weights": report.total,
        "layers": report.to_dict()["layers"],
        "train_seconds": train_seconds,
        "examples_per_second": len(dataset.x_train) * len(history) / max(train_seconds, 1e-9),
        "epochs": len(history),
        "dataset": config.dataset,
        "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
    }
    idata = None
    if config.method != "map":
        include_x = dataset.x_test.size <= 2_000_000
        idata = trainer.inference_data(
            dataset.x_test,
            dataset.y_test,
            config.eval_samples,
            include_x=include_x,
            progress=not quiet,
        )
        runs.write_idata(out / runs.IDATA, idata)
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            elpd = loo.elpd_loo(idata)
        result["elpd_loo"] = elpd["elpd_loo"]
        result["elpd_loo_se"] = elpd["se"]
        result["pareto_k_share_above_0.7"] = elpd["pareto_k_share_above_0.7"]
        result["loo_warning"] = "; ".join(str(w.message) for w in caught) or None
    else:
        result["elpd_loo"] = None
        result["elpd_loo_reason"] = MAP_LOO_REASON
    if dataset.task == "classification":
        probs = (
            _softmax(idata.posterior_predictive["logits"].values[0])
            if idata is not None
            else _softmax(outputs)[None]
        )
        result.update(metrics.classification_metrics(probs, dataset.y_test))
        result["test_error_predictive"] = 1.0 - result.pop("accuracy")
        result["test_error"] = float(np.mean(outputs.argmax(-1) != dataset.y_test))
        result["test_lpd"] = -result["nll"] * len(dataset.y_test)
    else:
        result.update(_regression_metrics(trainer, config, dataset, idata, outputs))
    runs.write_json(out / runs.METRICS, result)
    return result


#: Why a MAP run's metrics.json has ``"elpd_loo": null``.
MAP_LOO_REASON = (
    "PSIS-LOO needs posterior draws and a MAP run is a point estimate; test_lpd is its "
    "held-out log predictive density instead"
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _regression_metrics(trainer, config, dataset, idata=None, outputs=None) -> dict:
    """RMSE, Gaussian NLL, interval coverage and ``test_lpd`` (the summed held-out log
    predictive density) on the targets' original scale.

    Variational runs: of the posterior predictive draws of ``idata`` (made here when not
    given). MAP: of ``Normal(point prediction, sigma)`` with the fitted (or fixed)
    observation noise ``sigma``, which ``obs_noise_std`` reports.
    """
    from vdppl.diagnostics import metrics

    scale, n = float(dataset.y_std), len(dataset.y_test)
    y = dataset.y_test.astype(np.float64) * scale
    if config.method == "map":
        if outputs is None:
            outputs = trainer.pruned_outputs(dataset.x_test)
        mean = outputs.astype(np.float64) * scale
        sigma = trainer.observation_noise() * scale
        std = np.full_like(mean, sigma)
        result = {"rmse": metrics.rmse(mean, y), "gaussian_nll": metrics.gaussian_nll(mean, std, y)}
        for level, share in metrics.gaussian_interval_coverage(mean, std, y).items():
            result[f"coverage_{level:g}"] = share
        result["obs_noise_std"] = sigma
        result["test_lpd"] = -result["gaussian_nll"] * n
        return result
    if idata is None:
        idata = trainer.inference_data(
            dataset.x_test, dataset.y_test, config.eval_samples, include_x=False
        )
    draws = idata.posterior_predictive["y"].values[0]
    result = metrics.regression_metrics(draws * scale, y)
    log_lik = idata.log_likelihood["y"].values[0].astype(np.float64)  # (draws, n)
    top = log_lik.max(0)
    lpd = top + np.log(np.mean(np.exp(log_lik - top), axis=0))  # log mean_s p(y_i | w_s)
    result["test_lpd"] = float(lpd.sum() - n * np.log(scale))
    return result


def _summary(metrics: dict) -> str:
    keys = (
        "test_error",
        "nll",
        "test_lpd",
        "ece",
        "rmse",
        "gaussian_nll",
        "compression",
        "elpd_loo",
        "train_seconds",
    )
    parts = [f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float)]
    return "  ".join(parts)


# ------------------------------------------------------------ evaluate/report
def evaluate(args) -> int:
    run = Path(args.run)
    config = Config.from_dict(runs.read_json(run / runs.CONFIG))
    if args.data_root:
        config.data_root = args.data_root
    dataset = _load_dataset(config)
    classification = dataset.task == "classification"
    ood = None
    if args.dataset:
        if not classification:
            raise UsageError(
                f"{run} is a regression run (dataset {config.dataset}): OOD detection "
                "with --dataset compares predictive class entropies, so it needs a "
                f"classification run ({', '.join(_datasets_of('classification'))}). "
                f"Run 'vdppl evaluate {run}' without --dataset for its regression metrics."
            )
        ood = _load_dataset(config, args.dataset)
        if tuple(ood.input_shape) != tuple(dataset.input_shape):
            raise UsageError(
                f"--dataset {args.dataset} has inputs of shape {tuple(ood.input_shape)}, the run "
                f"was trained on {tuple(dataset.input_shape)}; OOD detection needs the same shape"
            )
    trainer = _trainer_class(config.backend)(config, dataset)
    extra = trainer.load(run / runs.CHECKPOINT)
    from vdppl.diagnostics import metrics

    result = {"run": str(run), "dataset": config.dataset, "epochs": extra["epoch"]}
    if classification:
        draws = trainer.predictive_probs(dataset.x_test, config.eval_samples)
        result.update(metrics.classification_metrics(draws, dataset.y_test))
    else:
        result.update(_regression_metrics(trainer, config, dataset))
    if ood is not None:
        in_dec = metrics.entropy_decomposition(draws)
        out_dec = metrics.entropy_decomposition(
            trainer.predictive_probs(ood.x_test, config.eval_samples)
        )
        result["ood_dataset"] = args.dataset
        for key in in_dec:
            result[f"ood_auroc_{key}"] = metrics.auroc(in_dec[key], out_dec[key])
        np.savez(
            run / f"ood-{args.dataset}.npz",
            entropy_in=in_dec["total"],
            entropy_out=out_dec["total"],
        )
    name = f"evaluation-{args.dataset}.json" if args.dataset else "evaluation.json"
    runs.write_json(run / name, result)
    for key, value in result.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return 0


def report(args) -> int:
    from vdppl.report import build_report

    print(f"report: {build_report(Path(args.run))}")
    return 0


# -------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    from vdppl.runs import BACKENDS, METHODS

    parser = argparse.ArgumentParser(prog="vdppl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="{train,evaluate,report,bench}")
    t = sub.add_parser("train", help="fit a model and write a run directory")
    t.add_argument("--backend", default="pyro", choices=BACKENDS)
    t.add_argument("--dataset", default="digits")
    t.add_argument("--data-root", help="directory with the dataset's files (idx, CIFAR binary)")
    t.add_argument("--arch", default="mlp", help="mlp, lenet300, lenet5, vgg-like")
    t.add_argument("--hidden", type=int, nargs="+", default=[100, 100], help="mlp hidden sizes")
    t.add_argument("--method", default="sparse-vd", choices=METHODS)
    t.add_argument("--epochs", type=int, default=None, help="default 60")
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument(
        "--variance-lr", type=float, help="learning rate of the variance parameters (default: --lr)"
    )
    t.add_argument(
        "--lr-schedule",
        default="constant",
        choices=("constant", "paper"),
        help="paper: constant for half the epochs, then linear to 0",
    )
    t.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="the KL weight reaches 1 at this epoch, linearly (default: half the epochs)",
    )
    t.add_argument(
        "--warmup-start",
        type=int,
        default=0,
        help="the KL weight is 0 before this epoch (the sparse VD paper: 5 with --warmup 20)",
    )
    t.add_argument("--threshold", type=float, default=3.0, help="prune where log alpha >= this")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init-log-sigma2", type=float, default=-10.0)
    t.add_argument("--dropout-p", type=float, default=0.5, help="gaussian-dropout rate")
    t.add_argument("--map-prior-scale", type=float, default=1.0)
    t.add_argument("--obs-noise", default="learned", help="regression: 'learned' or a std")
    t.add_argument("--eval-samples", type=int, default=100, help="posterior draws for metrics")
    t.add_argument("--limit-train", type=int, help="use only the first N training examples")
    t.add_argument("--limit-test", type=int, help="use only the first N test examples")
    t.add_argument("--pretrained", metavar="RUN", help="start the means from a MAP run")
    t.add_argument("--out", metavar="DIR", help="run directory (default runs/<dataset>-...)")
    t.add_argument("--resume", metavar="DIR", help="continue a stopped run (--epochs extends it)")
    t.add_argument("--force", action="store_true", help="overwrite an existing --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=train)
    e = sub.add_parser("evaluate", help="predictive metrics, and OOD detection with --dataset")
    e.add_argument("run")
    e.add_argument("--dataset", help="an out-of-distribution dataset with the same input shape")
    e.add_argument("--data-root")
    e.set_defaults(func=evaluate)
    r = sub.add_parser("report", help="rebuild report.html from a run directory alone")
    r.add_argument("run")
    r.set_defaults(func=report)
    from vdppl.bench import add_parser

    add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["train"]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "train":
        args.epochs_given = args.epochs is not None
        args.epochs = 60 if args.epochs is None else args.epochs
    try:
        return args.func(args)
    except UsageError as err:
        parser.exit(2, f"vdppl: error: {err}\n")
    except (FileExistsError, FileNotFoundError, ValueError, FloatingPointError) as err:
        print(f"vdppl: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
