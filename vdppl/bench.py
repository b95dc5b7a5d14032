"""``vdppl bench variance | speed | sparsify``: the papers' measurements, reproduced.

Each bench prints a table, or with ``--json`` one JSON object on stdout. ``--smoke`` runs
tiny sizes (what CI runs, to test the code path); the documented full runs are the
defaults. The backend-specific measurements live in ``vdppl.<backend>.bench``;
``sparsify`` drives the same trainers as ``vdppl train``.
"""

from __future__ import annotations

import importlib
import json
import time
from typing import Any

import numpy as np

__all__ = ["add_parser", "run"]


def _backend_bench(backend: str):
    return importlib.import_module(f"vdppl.{backend}.bench")


def bench_speed(args) -> dict:
    options = {"repeats": 1, "steps": 1, "warmup": 1} if args.smoke else {}
    out = _backend_bench(args.backend).speed(arch=args.arch, batch_size=args.batch_size, **options)
    return out


def bench_variance(args) -> dict:
    options = {"repeats": 4, "limit_train": 200, "epochs": 1} if args.smoke else {}
    options.setdefault("epochs", args.epochs)
    return _backend_bench(args.backend).variance(
        stage=args.stage, batch_size=args.batch_size, **options
    )


def bench_sparsify(args) -> dict:
    """Dense (MAP) and sparse VD runs of each architecture on each dataset."""
    from vdppl.cli import _load_dataset, _trainer_class
    from vdppl.runs import Config

    if args.smoke:
        args.epochs, args.warmup = 1, 1
    runs = []
    for dataset in args.datasets:
        for arch in args.archs:
            results = {}
            for method in ("map", "sparse-vd"):
                config = Config(
                    backend=args.backend,
                    dataset=dataset,
                    arch=arch,
                    method=method,
                    epochs=args.epochs,
                    lr=args.lr,
                    warmup=args.warmup,
                    batch_size=args.batch_size,
                    lr_schedule="paper",
                    seed=args.seed,
                    eval_samples=1,
                    limit_train=300 if args.smoke else None,
                    limit_test=100 if args.smoke else None,
                ).validate()
                data = _load_dataset(config)
                trainer = _trainer_class(args.backend)(config, data)
                start = time.perf_counter()
                for epoch in range(config.epochs):
                    trainer.epoch(epoch)
                seconds = time.perf_counter() - start
                outputs = trainer.pruned_outputs(data.x_test)
                report = trainer.sparsity()
                predictor = trainer.plain_predictor()
                results[method] = {
                    "arch": arch,
                    "dataset": dataset,
                    "method": method,
                    "test_error": float(np.mean(outputs.argmax(-1) != data.y_test)),
                    "compression": report.compression,
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
                }
            dense = results["map"]["inference_ms"]
            results["sparse-vd"]["speedup_vs_dense"] = dense / results["sparse-vd"]["inference_ms"]
            results["sparse-vd"]["error_vs_dense"] = (
                results["sparse-vd"]["test_error"] - results["map"]["test_error"]
            )
            runs += list(results.values())
    return {"runs": runs, "backend": args.backend, "smoke": args.smoke}


def _time_inference(predict, x, repeats: int = 5) -> float:
    """Median milliseconds to predict the whole test set."""
    predict(x[:10])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict(x)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


def _print_table(kind: str, out: dict[str, Any]) -> None:
    if kind == "speed":
        print(f"{out['arch']}, batch {out['batch_size']}, {out['backend']}")
        for name, ms in out["ms_per_step"].items():
            lo, hi = out["ms_min_max"][name]
            print(
                f"  {name:<24}{ms:9.2f} ms/step  (min {lo:.2f}, max {hi:.2f})  "
                f"x{out['ratio_to_plain'][name]:.2f} of plain"
            )
    elif kind == "variance":
        print(
            f"gradient variance, {out['stage']} ({out['epochs']} epochs), batch "
            f"{out['batch_size']}, {out['backend']}"
        )
        print(f"  {'estimator':<24}{'bottom':>12}{'top':>12}{'x bottom':>10}{'x top':>8}")
        for name, v in out["estimators"].items():
            r = out["ratio_to_local_reparam"][name]
            print(
                f"  {name:<24}{v['bottom']:12.3e}{v['top']:12.3e}{r['bottom']:10.1f}{r['top']:8.1f}"
            )
    else:
        head = f"{'dataset':<15}{'arch':<10}{'method':<11}{'error':>7}{'x':>8}{'units out':>10}{'ms':>8}"
        print(head)
        for r in out["runs"]:
            print(
                f"{r['dataset']:<15}{r['arch']:<10}{r['method']:<11}{r['test_error']:7.4f}"
                f"{r['compression']:8.1f}{r['units_removed']:10d}{r['inference_ms']:8.2f}"
            )


def add_parser(sub) -> None:
    """The ``bench`` sub-command and its three kinds."""
    bench = sub.add_parser("bench", help="reproduce the papers' measurements")
    kinds = bench.add_subparsers(dest="kind", metavar="{variance,speed,sparsify}", required=True)
    for kind, helptext in (
        ("variance", "gradient variance of three estimators (Kingma et al. Table 1)"),
        ("speed", "ms per SVI step against hand-written code"),
        ("sparsify", "dense vs sparse VD: error, compression, inference time"),
    ):
        p = kinds.add_parser(kind, help=helptext)
        p.add_argument("--backend", default="pyro", choices=("pyro", "numpyro"))
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        p.add_argument("--smoke", action="store_true", help="tiny sizes (what CI runs)")
        p.add_argument("--batch-size", type=int, default=100)
        p.add_argument("--seed", type=int, default=0)
        if kind == "speed":
            p.add_argument("--arch", default="lenet300", choices=("lenet300", "lenet5"))
        if kind == "variance":
            p.add_argument("--stage", default="init", choices=("init", "trained"))
            p.add_argument("--epochs", type=int, default=10, help="training before 'trained'")
        if kind == "sparsify":
            p.add_argument("--datasets", nargs="+", default=["fashion-mnist", "mnist5k"])
            p.add_argument("--archs", nargs="+", default=["lenet300", "lenet5"])
            p.add_argument("--epochs", type=int, default=200)
            p.add_argument("--warmup", type=int, default=20)
            p.add_argument("--lr", type=float, default=1e-3)
        p.set_defaults(func=run)


def run(args) -> int:
    out = {"speed": bench_speed, "variance": bench_variance, "sparsify": bench_sparsify}[args.kind](
        args
    )
    if args.json:
        print(json.dumps(out))
    else:
        _print_table(args.kind, out)
    return 0
