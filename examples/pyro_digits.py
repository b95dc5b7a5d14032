"""Sparse variational dropout on scikit-learn's digits with Pyro, end to end.

    python examples/pyro_digits.py            # ~10 s on a laptop CPU

Trains a 64-100-100-10 MLP with SVI (LocalReparamELBO + AutoVariationalDropout), the KL
weight warmed up from 0 to 1 over the first half of training as Molchanov et al. (2017)
do, then prints the sparsity report, the accuracy of the pruned mean network and of the
compressed plain torch module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl.datasets import load_digits


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, then the previous count back."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    epochs: int = 60,
    warmup: int = 30,
    lr: float = 3e-3,
    batch_size: int = 100,
    seed: int = 0,
    hidden: int = 100,
    quiet: bool = False,
    threads: int = 1,
) -> dict:
    """Fit sparse VD on digits; return metrics and the fitted objects.

    ``threads``: torch's intra-op threads while training. The matrices of this network
    are tiny (batch 100, width 100), so splitting each product over threads costs more in
    synchronisation than it saves: on a loaded 2-core machine the 60 epochs took 10-19 s
    with one thread and 44-120 s with two.
    """
    with torch_threads(threads):
        return _train(epochs, warmup, lr, batch_size, seed, hidden, quiet)


def _train(epochs, warmup, lr, batch_size, seed, hidden, quiet) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = load_digits()
    x_train, y_train = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    x_test, y_test = torch.as_tensor(data.x_test), torch.as_tensor(data.y_test)
    n = len(x_train)

    net = torch.nn.Sequential(
        torch.nn.Linear(64, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 10),
    )
    bnn = vd.bayesianize(net)  # log-uniform priors on the weights

    def model(x, y=None):
        logits = pyro.deterministic("logits", bnn(x))
        with pyro.plate("data", n, subsample=torch.arange(len(x))):  # scales the data term
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)  # sparse VD: theta and log sigma^2 per weight
    elbo = vd.LocalReparamELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)

    start = time.perf_counter()
    for epoch in range(epochs):
        elbo.kl_weight = min(1.0, epoch / warmup) if warmup else 1.0
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            total += svi.step(x_train[idx], y_train[idx])
        if not quiet and (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  loss {total / n:8.4f}  kl weight {elbo.kl_weight:.2f}")
    seconds = time.perf_counter() - start

    report = vd.sparsity_report(guide)
    mean_logits = vd.predict(model, guide, x_test, mode="mean")["logits"][0]
    small = vd.compress(bnn, guide).eval()
    with torch.no_grad():
        small_logits = small(x_test)
    return {
        "accuracy_pruned_mean": (mean_logits.argmax(-1) == y_test).float().mean().item(),
        "accuracy_compressed": (small_logits.argmax(-1) == y_test).float().mean().item(),
        "compression": report.compression,
        "train_seconds": seconds,
        "report": report,
        "compressed": small,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = train(epochs=args.epochs, warmup=args.epochs // 2, seed=args.seed)
    print(result["report"])
    print(result["compressed"])
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("report", "compressed")}, indent=2)
    )


if __name__ == "__main__":
    main()
