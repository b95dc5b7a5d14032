"""``vdppl bench variance | speed | sparsify``: the papers' measurements, reproduced.

Each bench prints a table, or with ``--json`` one JSON object on stdout. ``--smoke`` runs
tiny sizes (what CI runs, to test the code path); the documented full runs are the
defaults. The backend-specific measurements live in ``vdppl.<backend>.bench`` (the
command is the only entry point: ``python -m vdppl.<backend>.bench`` is not one);
``sparsify`` drives the same trainers as ``vdppl train``. This module also holds what the
two backends' bench modules share: argument checks, the interleaved timer, the minibatch
draws and the running variance of the gradient study, and the JSON records.

JSON of each kind (extra keys are allowed and documented where they are made):

* ``variance``: ``{"estimators": {"local_reparam": {"bottom": v, "top": v},
  "weight_per_example": {...}, "weight_per_minibatch": {...}}, "backend", "stage", ...}``
* ``speed``: ``{"ms_per_step": {"vdppl_lrt": m, "vdppl_weight_sample": m, "plain": m,
  "deterministic": m}, "arch", "backend", "batch_size", ...}``
* ``sparsify``: ``{"runs": [{"arch", "dataset", "method", "recipe", "test_error",
  "compression", "layers", "units_removed", "inference_ms", ...}], ...}``
* ``gradreg``: ``{"runs": [{"dataset", "arch", "method", "test_error", "nll", "ece",
  "brier", "compression", "train_seconds", ...}], ...}``

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) "Variational Dropout Sparsifies Deep Neural
    Networks", ICML, arXiv:1701.05369.
[3] Unlu, Aitchison (2020) "Gradient Regularisation as Approximate Variational
    Inference", arXiv:2011.10443.
[4] Unlu, Aitchison (2021) "Variational Laplace for Bayesian neural networks",
    arXiv:2103.00222.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ARCHS",
    "ESTIMATORS",
    "SPEED_IMPLEMENTATIONS",
    "GradientVariance",
    "add_parser",
    "check_speed_args",
    "check_variance_args",
    "machine_info",
    "minibatches",
    "run",
    "speed_result",
    "time_interleaved",
]

#: Architectures of ``vdppl bench speed`` (specs in :mod:`vdppl.models`).
ARCHS = ("lenet300", "lenet5")
#: The implementations whose ms per step the speed JSON's ``ms_per_step`` holds.
SPEED_IMPLEMENTATIONS = ("vdppl_lrt", "vdppl_weight_sample", "plain", "deterministic")
#: Training-set size the speed benches scale the data term to (MNIST's 60,000).
SPEED_N_TRAIN = 60_000
#: The three gradient estimators of [1]'s Table 1, in the variance JSON's order.
ESTIMATORS = ("local_reparam", "weight_per_example", "weight_per_minibatch")
#: Dataset and network of the variance bench: LeNet-300-100 on the MNIST subset.
VARIANCE_DATASET, VARIANCE_ARCH = "mnist5k", "lenet300"
#: How the variance bench describes what it differentiates (also in its JSON).
VARIANCE_PARAMETERS = (
    "sparse VD's variational parameters of the layer's weights: theta (the means) and "
    "log_sigma2; 'estimators' is the variance for theta, 'parameters' has both"
)
#: What the variance bench should show, and why (also in its JSON).
VARIANCE_NOTES = (
    "weight_per_minibatch is the highest everywhere: its weight noise is shared by the "
    "minibatch and does not average out. For log_sigma2, local_reparam is the lowest in "
    "every layer. For theta of the top layer, local_reparam and weight_per_example have the "
    "same distribution (the same pre-activation distribution, and d b / d theta = x in "
    "both), so they differ by sampling error only; below the top, the backpropagated "
    "signal runs through sampled weights in weight_per_example and through the LRT's mean "
    "and standard deviation in local_reparam, and local_reparam is lower."
)
#: Recipes of ``vdppl bench sparsify`` ([2]'s code: LeNet-300-100 from scratch, LeNet-5 and
#: VGG-like from a pretrained dense network), each with the KL warm-up.
RECIPES = {
    "scratch": "from scratch (random init), KL warm-up",
    "pretrained": "means from this bench's dense (MAP) run, then sparse VD with KL warm-up",
}
PAPER_RECIPE = {"lenet300": "scratch", "mlp": "scratch"}  # other archs: pretrained


# ------------------------------------------------------------------- arguments
def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")


def check_speed_args(arch: str, batch_size: int, repeats: int, steps: int, warmup: int) -> None:
    """Raise ``ValueError`` naming the bad argument of a speed bench and its valid range."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    _check_int("batch_size", batch_size, 1)
    _check_int("repeats", repeats, 1)
    _check_int("steps", steps, 1)
    _check_int("warmup", warmup, 0)


def check_variance_args(
    stage: str, epochs: int, batch_size: int, repeats: int, limit_train: int | None
) -> None:
    """Raise ``ValueError`` naming the bad argument of a variance bench and its valid range."""
    if stage not in ("init", "trained"):
        raise ValueError(f"stage must be 'init' or 'trained'; got {stage!r}")
    _check_int("epochs", epochs, 1 if stage == "trained" else 0)
    _check_int("batch_size", batch_size, 1)
    _check_int("repeats", repeats, 2)  # a variance needs two estimates
    if limit_train is not None:
        _check_int("limit_train", limit_train, 1)
        if limit_train < batch_size:
            raise ValueError(
                f"limit_train ({limit_train}) must be >= batch_size ({batch_size}): each "
                "estimate draws one minibatch without replacement from the training examples"
            )


# ----------------------------------------------------------------------- speed
def time_interleaved(
    runners: Mapping[str, Callable[[int], None]],
    warmup: int = 10,
    repeats: int = 7,
    steps: int = 20,
) -> dict[str, dict[str, float]]:
    """Median, min and max milliseconds per step, and first-call seconds, of each runner.

    ``runners[name](n)`` runs ``n`` steps and returns when their results exist (JAX:
    after ``block_until_ready``). Each runner is called once (the first call: tracing and
    compilation in JAX, set-up in Pyro), then ``warmup`` steps; then ``repeats`` rounds in
    which every runner runs ``steps`` steps in turn, the order rotating each round, so a
    change in machine load hits all implementations alike::

        ms[name][r] = 1000 * seconds(runners[name](steps)) / steps
        compile_seconds = max(first_call - median(ms) / 1000, 0)
    """
    first, ms = {}, {name: [] for name in runners}
    for name, run in runners.items():
        start = time.perf_counter()
        run(1)
        first[name] = time.perf_counter() - start
        if warmup:
            run(warmup)
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name](steps)
            ms[name].append(1000 * (time.perf_counter() - start) / steps)
    out = {}
    for name, values in ms.items():
        median = statistics.median(values)
        out[name] = {
            "median": median,
            "min": min(values),
            "max": max(values),
            "compile_seconds": max(first[name] - median / 1000, 0.0),
        }
    return out


def machine_info(**extra: Any) -> dict[str, Any]:
    """CPU count, platform, Python and library versions, plus the backend's ``extra``."""
    from importlib import metadata

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    versions = {}
    for name in ("vdppl", "numpy", "torch", "pyro-ppl", "jax", "jaxlib", "numpyro", "flax"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        **extra,
    }


def speed_result(
    timing: Mapping[str, Mapping[str, float]],
    *,
    arch: str,
    backend: str,
    batch_size: int,
    seed: int,
    machine: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The speed JSON: ``ms_per_step`` of :data:`SPEED_IMPLEMENTATIONS`, other timed
    implementations under ``extra_ms_per_step``, and every implementation's min/max,
    ratio to ``plain`` (``median / median_plain``) and compile seconds."""
    plain = timing["plain"]["median"]
    extras = [name for name in timing if name not in SPEED_IMPLEMENTATIONS]
    return {
        "ms_per_step": {k: timing[k]["median"] for k in SPEED_IMPLEMENTATIONS},
        "arch": arch,
        "backend": backend,
        "batch_size": batch_size,
        "extra_ms_per_step": {k: timing[k]["median"] for k in extras},
        "ms_min_max": {k: [v["min"], v["max"]] for k, v in timing.items()},
        "ratio_to_plain": {k: v["median"] / plain for k, v in timing.items()},
        "compile_seconds": {k: v["compile_seconds"] for k, v in timing.items()},
        "seed": seed,
        "machine": dict(machine),
        **extra,
    }


# -------------------------------------------------------------------- variance
def minibatches(n: int, batch_size: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` minibatches of ``batch_size`` distinct indices in ``[0, n)`` (NumPy's
    generator seeded by ``seed``), the same for every estimator and both backends."""
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=batch_size, replace=False) for _ in range(count)]


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One shuffled pass over ``[0, n)`` in minibatches (the last one may be smaller)."""
    order = rng.permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class GradientVariance:
    """Running per-element variance of gradient draws (Welford's update, float64)::

        mean_k = mean_{k-1} + (g_k - mean_{k-1}) / k
        m2_k   = m2_{k-1} + (g_k - mean_{k-1}) * (g_k - mean_k)
        value  = mean over elements of m2_K / (K - 1)     (unbiased, K draws)

    keyed by ``(estimator, parameter, layer)``, so no draw is kept in memory.
    """

    def __init__(self) -> None:
        self._state: dict[tuple[str, str, str], list] = {}

    def add(self, estimator: str, parameter: str, layer: str, grad) -> None:
        g = np.asarray(grad, dtype=np.float64)
        state = self._state.setdefault((estimator, parameter, layer), [0, 0.0, 0.0])
        state[0] += 1
        delta = g - state[1]
        state[1] = state[1] + delta / state[0]
        state[2] = state[2] + delta * (g - state[1])

    def value(self, estimator: str, parameter: str, layer: str) -> float:
        count, _, m2 = self._state[(estimator, parameter, layer)]
        if count < 2:
            raise ValueError("a variance needs at least two gradient draws")
        return float(np.mean(m2 / (count - 1)))

    def result(
        self, parameters: tuple[str, ...], backend: str, stage: str, **extra: Any
    ) -> dict[str, Any]:
        """The variance JSON: ``estimators`` (for ``parameters[0]``, theta) and its ratios to
        local reparameterization, then every parameter's under ``parameters``."""
        by_parameter = {}
        for parameter in parameters:
            values = {
                e: {layer: self.value(e, parameter, layer) for layer in ("bottom", "top")}
                for e in ESTIMATORS
            }
            lrt = values["local_reparam"]
            ratios = {e: {k: v[k] / lrt[k] for k in v} for e, v in values.items()}
            by_parameter[parameter] = {"estimators": values, "ratio_to_local_reparam": ratios}
        head = by_parameter[parameters[0]]
        return {
            "estimators": head["estimators"],
            "backend": backend,
            "stage": stage,
            "ratio_to_local_reparam": head["ratio_to_local_reparam"],
            "parameters": by_parameter,
            "differentiated": VARIANCE_PARAMETERS,
            "notes": VARIANCE_NOTES,
            "arch": VARIANCE_ARCH,
            **extra,
        }


# -------------------------------------------------------------------- commands
def _backend_bench(backend: str):
    return importlib.import_module(f"vdppl.{backend}.bench")


def bench_speed(args) -> dict:
    # smoke: no extra implementations (their compilation would dominate a CI run)
    options = {"repeats": 2, "steps": 1, "warmup": 1, "extras": False} if args.smoke else {}
    return _backend_bench(args.backend).speed(
        arch=args.arch, batch_size=args.batch_size, seed=args.seed, **options
    )


def bench_variance(args) -> dict:
    """Empirical variance of the minibatch gradient of the ELBO for three estimators.

    The analogue of [1]'s Table 1, the same in both backends: LeNet-300-100 on the MNIST
    subset (``vdppl.data.load("mnist5k")``, its first ``limit_train`` training examples,
    ``N`` of them) with sparse VD's guide (additive noise, ``theta`` and ``log_sigma2`` per
    weight, [2]), started at ``alpha = 1`` for every weight (``log_sigma2 = log(theta**2 +
    1e-8)``: Gaussian dropout with ``p = 0.5``, the noise level of [1]'s Table 1);
    ``--stage trained`` first fits ``--epochs`` epochs with the LRT estimator (Adam,
    learning rate 1e-3, KL weight 1).

    Each of ``repeats`` draws takes the next minibatch of ``batch_size`` examples from
    :func:`minibatches` (the same minibatches for every estimator) and computes ``g =
    d(-ELBO) / d(theta, log_sigma2)`` of the bottom and top layers, ``-ELBO = N / B *
    sum_batch -log p(y | x, w) + KL``, with the local reparameterization
    (``local_reparam``), a weight sample per example (``weight_per_example``) or one
    weight sample shared by the minibatch (``weight_per_minibatch``). The figure is the
    unbiased variance of each element over the draws, averaged over the layer's elements
    (:class:`GradientVariance`); :data:`VARIANCE_NOTES` says what to expect of the ordering.
    """
    options = {"repeats": 3, "limit_train": 200, "dataset": "digits"} if args.smoke else {}
    return _backend_bench(args.backend).variance(
        stage=args.stage,
        epochs=1 if args.smoke else args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        **options,
    )


def bench_sparsify(args) -> dict:
    """Dense (MAP) and sparse VD runs of each architecture on each dataset."""

    if args.smoke:
        args.epochs, args.warmup, args.warmup_start = 1, 1, 0
    runs = []
    for dataset in args.datasets:
        for arch in args.archs:
            recipe = _recipe(args.recipe, arch)
            results: dict[str, dict] = {}
            with tempfile.TemporaryDirectory(prefix="vdppl-bench-") as tmp:
                for method in ("map", "sparse-vd"):
                    config = _run_config(
                        args,
                        dataset,
                        arch,
                        method,
                        eval_samples=1,
                        pretrained=tmp if method != "map" and recipe == "pretrained" else None,
                    )
                    trainer, data, seconds = _train(config)
                    if method == "map" and recipe == "pretrained":
                        _save_run(trainer, config, Path(tmp))
                    results[method] = _sparsify_record(trainer, config, data, seconds, recipe)
            dense, sparse = results["map"], results["sparse-vd"]
            sparse["dense_inference_ms"] = dense["inference_ms"]
            sparse["speedup_vs_dense"] = dense["inference_ms"] / sparse["inference_ms"]
            sparse["error_vs_dense"] = sparse["test_error"] - dense["test_error"]
            runs += [dense, sparse]
    return {
        "runs": runs,
        "backend": args.backend,
        "smoke": args.smoke,
        "recipes": RECIPES,
        "kl_warmup": {"start": args.warmup_start, "end": args.warmup},
        "lr_schedule": "paper: constant for half the epochs, then linear to 0",
        "seed": args.seed,
        "machine": machine_info(),
    }


def bench_gradreg(args) -> dict:
    """MAP, sampling VI and the gradient-regularised objective, trained alike ([3]'s claim).

    For each dataset, the same network (``--arch``), prior and training budget (epochs,
    batch size, Adam at ``--lr`` with the paper schedule, KL warm-up) for:

    * ``map``: the point estimate under a Normal(0, 1) prior (``vdppl train --method map``);
    * ``sparse-vd``: sampling VI, the Monte Carlo ELBO with the local reparameterization,
      log-uniform prior, factorised Gaussian posterior with a learned variance per weight;
    * ``gradreg``: the same prior and posterior family, fitted with [3]'s deterministic
      objective (:class:`vdppl.pyro.GradientRegularizedELBO` / its NumPyro twin) at ``--lr``;
    * ``gradreg+variance-lr``: the same with the variance parameters at ``--variance-lr``
      ([3] and [4] warn that the variances converge slowly at the means' learning rate).

    Test error, NLL and expected calibration error (15 equal-width bins) come from the
    posterior predictive, ``mean_s p(y | x, w_s)`` over ``--eval-samples`` LRT draws (MAP:
    the point estimate), on the test split; the draws are of the whole posterior (no
    pruning). ``test_error_mean_network`` is the error of the pruned mean network (the
    sparse deterministic predictor of [2]; MAP: the point estimate).
    """
    from vdppl.diagnostics import metrics

    if args.smoke:
        args.epochs, args.warmup, args.warmup_start, args.eval_samples = 1, 1, 0, 4
    variants = {
        "map": ("map", None),
        "sparse-vd": ("sparse-vd", None),
        "gradreg": ("gradreg", None),
        "gradreg+variance-lr": ("gradreg", args.variance_lr),
    }
    runs = []
    for dataset in args.datasets:
        for label, (method, variance_lr) in variants.items():
            config = _run_config(
                args,
                dataset,
                args.arch,
                method,
                variance_lr=variance_lr,
                eval_samples=args.eval_samples,
            )
            trainer, data, seconds = _train(config)
            draws = 1 if method == "map" else config.eval_samples
            scores = metrics.classification_metrics(
                trainer.predictive_probs(data.x_test, draws), data.y_test
            )
            runs.append(
                {
                    "dataset": dataset,
                    "arch": args.arch,
                    "method": label,
                    "variance_lr": variance_lr,
                    "test_error": 1.0 - scores["accuracy"],
                    "test_error_mean_network": float(
                        np.mean(trainer.pruned_outputs(data.x_test).argmax(-1) != data.y_test)
                    ),
                    "nll": scores["nll"],
                    "ece": scores["ece"],
                    "brier": scores["brier"],
                    "compression": trainer.sparsity().compression,
                    "train_seconds": seconds,
                    "epochs": config.epochs,
                    "train_examples": len(data.x_train),
                    "test_examples": len(data.x_test),
                }
            )
    return {
        "runs": runs,
        "backend": args.backend,
        "smoke": args.smoke,
        "lr": args.lr,
        "variance_lr": args.variance_lr,
        "eval_samples": args.eval_samples,
        "kl_warmup": {"start": args.warmup_start, "end": args.warmup},
        "lr_schedule": "paper: constant for half the epochs, then linear to 0",
        "seed": args.seed,
        "machine": machine_info(),
    }


def _run_config(args, dataset: str, arch: str, method: str, **options):
    """The ``Config`` of one run of a training bench: the bench's shared options (epochs,
    lr with the paper schedule, KL warm-up, batch size, seed; ``--smoke``: the first 300
    training and 100 test examples) and the run's ``options``."""
    from vdppl.runs import Config

    return Config(
        backend=args.backend,
        dataset=dataset,
        data_root=args.data_root,
        arch=arch,
        method=method,
        epochs=args.epochs,
        lr=args.lr,
        warmup=args.warmup,
        warmup_start=args.warmup_start,
        batch_size=args.batch_size,
        lr_schedule="paper",
        seed=args.seed,
        limit_train=300 if args.smoke else None,
        limit_test=100 if args.smoke else None,
        **options,
    ).validate()


def _train(config):
    """Train a run of ``config`` in memory: ``(trainer, dataset, seconds)``. Stops if the
    trainer's KL weight is not the warm-up schedule of ``config``."""
    from vdppl.cli import _load_dataset, _trainer_class

    data = _load_dataset(config)
    trainer = _trainer_class(config.backend)(config, data)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        row = trainer.epoch(epoch)
        if config.method != "map":
            _check_kl_weight(row, epoch, config, config.backend)
    return trainer, data, time.perf_counter() - start


def _check_kl_weight(row: Mapping[str, Any], epoch: int, config, backend: str) -> None:
    """Stop if a Trainer's epoch used another KL weight than the bench's warm-up schedule
    (the recipe printed with the results must be the one that ran)."""
    from vdppl.runs import kl_weight_at

    want = kl_weight_at(epoch, config.warmup, config.warmup_start)
    if abs(row["kl_weight"] - want) > 1e-12:
        raise RuntimeError(
            f"the {backend} Trainer used KL weight {row['kl_weight']} in epoch {epoch}, not "
            f"{want}: it ignores Config.warmup_start; pass it to vdppl.runs.kl_weight_at"
        )


def _recipe(recipe: str, arch: str) -> str:
    if recipe == "paper":
        return PAPER_RECIPE.get(arch, "pretrained")
    return recipe


def _save_run(trainer, config, path: Path) -> None:
    """The dense run as a run directory, for ``Config.pretrained`` of the sparse run."""
    from vdppl import runs

    runs.write_json(path / runs.CONFIG, config.to_dict())
    trainer.save(path / runs.CHECKPOINT, epoch=config.epochs, history=[])


def _sparsify_record(trainer, config, data, seconds: float, recipe: str) -> dict:
    outputs = trainer.pruned_outputs(data.x_test)
    report = trainer.sparsity()
    predictor = trainer.plain_predictor()
    return {
        "arch": config.arch,
        "dataset": config.dataset,
        "method": config.method,
        "recipe": "dense" if config.method == "map" else recipe,
        "test_error": float(np.mean(outputs.argmax(-1) != data.y_test)),
        "compression": report.compression,
        "kept_weights": report.kept,
        "total_weights": report.total,
        "layers": {
            layer.name: {
                "kept": layer.kept,
                "total": layer.total,
                "compression": layer.compression,
                "dead_outputs": layer.dead_outputs,
            }
            for layer in report.layers
        },
        "units_removed": predictor["units_removed"],
        "inference_ms": _time_inference(predictor["predict"], data.x_test),
        "train_seconds": seconds,
        "epochs": config.epochs,
        "train_examples": len(data.x_train),
        "test_examples": len(data.x_test),
    }


def _time_inference(predict, x, repeats: int = 5) -> float:
    """Median milliseconds to predict the whole test set, after one untimed call on it
    (a jitted predictor compiles for each input shape: warming up on a smaller batch
    left the compilation in the first timed call)."""
    predict(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(x)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


# ---------------------------------------------------------------------- tables
def _print_table(kind: str, out: dict[str, Any]) -> None:
    if kind == "speed":
        print(f"{out['arch']}, batch {out['batch_size']}, {out['backend']}")
        print(
            f"  {'implementation':<26}{'ms/step':>9}{'min':>9}{'max':>9}{'x plain':>9}{'compile s':>11}"
        )
        for name in (*out["ms_per_step"], *out["extra_ms_per_step"]):
            lo, hi = out["ms_min_max"][name]
            ms = out["ms_per_step"].get(name, out["extra_ms_per_step"].get(name))
            print(
                f"  {name:<26}{ms:9.2f}{lo:9.2f}{hi:9.2f}{out['ratio_to_plain'][name]:9.2f}"
                f"{out['compile_seconds'][name]:11.2f}"
            )
    elif kind == "variance":
        print(
            f"gradient variance, {out['stage']} ({out['epochs']} epochs), batch "
            f"{out['batch_size']}, {out['repeats']} draws, {out['arch']} on {out['dataset']}, "
            f"{out['backend']}"
        )
        for parameter, table in out["parameters"].items():
            print(f"  d ELBO / d {parameter}")
            print(
                f"    {'estimator':<24}{'bottom':>12}{'top':>12}{'x LRT bot':>11}{'x LRT top':>11}"
            )
            for name, v in table["estimators"].items():
                r = table["ratio_to_local_reparam"][name]
                print(
                    f"    {name:<24}{v['bottom']:12.3e}{v['top']:12.3e}"
                    f"{r['bottom']:11.2f}{r['top']:11.2f}"
                )
    elif kind == "gradreg":
        print(
            f"MAP vs sampling VI vs gradient regularisation, {out['backend']}, lr {out['lr']}, "
            f"{out['eval_samples']} predictive draws"
        )
        print(
            f"{'dataset':<15}{'arch':<10}{'method':<21}{'error':>8}{'NLL':>8}{'ECE':>8}"
            f"{'mean err':>9}{'x':>8}{'s':>8}"
        )
        for r in out["runs"]:
            print(
                f"{r['dataset']:<15}{r['arch']:<10}{r['method']:<21}{r['test_error']:8.4f}"
                f"{r['nll']:8.4f}{r['ece']:8.4f}{r['test_error_mean_network']:9.4f}"
                f"{r['compression']:8.1f}{r['train_seconds']:8.1f}"
            )
    else:
        print(
            f"sparsify, {out['backend']}: KL weight 0 until epoch {out['kl_warmup']['start']}, "
            f"1 from epoch {out['kl_warmup']['end']}; lr {out['lr_schedule']}"
        )
        print(f"recipes: {'; '.join(f'{k} = {v}' for k, v in out['recipes'].items())}")
        head = (
            f"{'dataset':<15}{'arch':<10}{'method':<11}{'recipe':<12}{'error':>7}{'+err':>7}"
            f"{'x':>8}{'units out':>10}{'ms':>8}{'x faster':>9}"
        )
        print(head)
        for r in out["runs"]:
            extra = f"{100 * r['error_vs_dense']:+7.2f}" if "error_vs_dense" in r else f"{'':>7}"
            speedup = f"{r['speedup_vs_dense']:9.2f}" if "speedup_vs_dense" in r else f"{'':>9}"
            print(
                f"{r['dataset']:<15}{r['arch']:<10}{r['method']:<11}{r['recipe']:<12}"
                f"{r['test_error']:7.4f}{extra}{r['compression']:8.1f}{r['units_removed']:10d}"
                f"{r['inference_ms']:8.2f}{speedup}"
            )
            if r["method"] != "map":
                for name, layer in r["layers"].items():
                    print(
                        f"    {name:<20}{layer['kept']:>9}/{layer['total']:<9}"
                        f"x{layer['compression']:.1f}  dead units {layer['dead_outputs']}"
                    )


def add_parser(sub) -> None:
    """The ``bench`` sub-command and its kinds."""
    bench = sub.add_parser("bench", help="reproduce the papers' measurements")
    kinds = bench.add_subparsers(
        dest="kind", metavar="{variance,speed,sparsify,gradreg}", required=True
    )
    for kind, helptext in (
        ("variance", "gradient variance of three estimators (Kingma et al. Table 1)"),
        ("speed", "ms per SVI step against hand-written code"),
        ("sparsify", "dense vs sparse VD: error, compression, inference time"),
        ("gradreg", "MAP vs sampling VI vs gradient regularisation: error, NLL, ECE"),
    ):
        p = kinds.add_parser(kind, help=helptext)
        p.add_argument("--backend", default="pyro", choices=("pyro", "numpyro"))
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        p.add_argument("--smoke", action="store_true", help="tiny sizes (what CI runs)")
        p.add_argument("--batch-size", type=int, default=100)
        p.add_argument("--seed", type=int, default=0, help="seeds data draws, init and noise")
        if kind == "speed":
            p.add_argument("--arch", default="lenet300", choices=ARCHS)
        if kind == "variance":
            p.add_argument("--stage", default="init", choices=("init", "trained"))
            p.add_argument("--epochs", type=int, default=10, help="training before 'trained'")
        if kind == "sparsify":
            _training_arguments(p, ["fashion-mnist", "mnist5k"], epochs=200, warmup=(5, 20))
            p.add_argument("--archs", nargs="+", default=["lenet300", "lenet5"])
            p.add_argument(
                "--recipe",
                default="paper",
                choices=("paper", *RECIPES),
                help="paper: lenet300 from scratch, others from the dense run's weights",
            )
        if kind == "gradreg":
            _training_arguments(p, ["mnist5k", "fashion-mnist"], epochs=30, warmup=(0, 10))
            p.add_argument("--arch", default="lenet300", choices=ARCHS)
            p.add_argument(
                "--variance-lr",
                type=float,
                default=1e-2,
                help="learning rate of the variances in the gradreg+variance-lr row",
            )
            p.add_argument("--eval-samples", type=int, default=100)
        p.set_defaults(func=run)


def _training_arguments(p, datasets: list[str], epochs: int, warmup: tuple[int, int]) -> None:
    """The options of the benches that train runs (``sparsify``, ``gradreg``)."""
    p.add_argument("--datasets", nargs="+", default=datasets)
    p.add_argument("--data-root", help="directory with the datasets' files")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--warmup", type=int, default=warmup[1], help="KL weight 1 from this epoch")
    p.add_argument(
        "--warmup-start", type=int, default=warmup[0], help="KL weight 0 before this epoch"
    )
    p.add_argument("--lr", type=float, default=1e-3)


def run(args) -> int:
    kinds = {
        "speed": bench_speed,
        "variance": bench_variance,
        "sparsify": bench_sparsify,
        "gradreg": bench_gradreg,
    }
    out = kinds[args.kind](args)
    if args.json:
        print(json.dumps(out))
    else:
        _print_table(args.kind, out)
    return 0
