"""Cost of one sparse-VD SVI step in Pyro against hand-written torch code.

``python -m vdppl.pyro.bench`` times LeNet-300-100 (784-300-100-10) at batch 100 on random
data. The plain implementation below is the same maths with no PPL: per layer ``theta``,
``log_sigma2`` and a bias, local reparameterization, Molchanov's KL from
:mod:`vdppl.kl`, the data term scaled by ``N / batch``, one ``torch.optim.Adam``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl import kl as vdkl

__all__ = ["lenet300", "plain_sparse_vd_step", "speed", "time_steps", "vdppl_steps"]

N_TRAIN = 60_000


def lenet300() -> torch.nn.Sequential:
    """LeNet-300-100: 784-300-100-10 with ReLU."""
    return torch.nn.Sequential(
        torch.nn.Linear(784, 300), torch.nn.ReLU(),
        torch.nn.Linear(300, 100), torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )  # fmt: skip


def plain_sparse_vd_step(net: torch.nn.Sequential, lr: float = 1e-3) -> Callable:
    """A hand-written sparse-VD step for ``net``'s Linear layers (no Pyro)."""
    layers = [m for m in net if isinstance(m, torch.nn.Linear)]
    params = []
    for layer in layers:
        theta = layer.weight.detach().clone().requires_grad_()
        log_sigma2 = torch.full_like(theta, -10.0).requires_grad_()
        bias = layer.bias.detach().clone().requires_grad_()
        params.append((theta, log_sigma2, bias))
    optim = torch.optim.Adam([p for group in params for p in group], lr=lr)

    def step(x, y):
        optim.zero_grad()
        h = x
        kl = 0.0
        for i, (theta, log_sigma2, bias) in enumerate(params):
            mean = F.linear(h, theta, bias)
            var = F.linear(h * h, log_sigma2.exp())
            h = mean + torch.sqrt(var + 1e-8) * torch.randn_like(mean)
            if i < len(params) - 1:
                h = torch.relu(h)
            kl = kl + vdkl.kl_molchanov(vdkl.log_alpha_from_sigma2(theta, log_sigma2)).sum()
        nll = F.cross_entropy(h, y, reduction="sum") * (N_TRAIN / len(x))
        loss = nll + kl
        loss.backward()
        optim.step()
        return loss.item()

    return step


def vdppl_steps(net: torch.nn.Sequential, lr: float = 1e-3, lrt: bool = True) -> dict:
    """vdppl's step, two ways: Pyro's ``SVI`` and the ELBO module with ``torch.optim``."""
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = bnn(x)
        with pyro.plate("data", N_TRAIN, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)
    elbo = vd.LocalReparamELBO(local_reparam=lrt)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)

    # Pyro's PyTorch-native idiom: the ELBO as a module, optimized by torch directly.
    loss_module = elbo(model, guide)
    optim: list[torch.optim.Optimizer] = []

    def torch_step(x, y):
        loss = loss_module(x, y)
        if not optim:  # parameters exist after the first call
            optim.append(torch.optim.Adam(loss_module.parameters(), lr=lr))
        optim[0].zero_grad()
        loss.backward()
        optim[0].step()
        return loss.item()

    return {"svi": svi.step, "elbo_module": torch_step}


def time_steps(step: Callable, x, y, warmup: int = 10, repeats: int = 7, steps: int = 20) -> dict:
    """Median, min and max milliseconds per step over ``repeats`` runs of ``steps`` steps."""
    for _ in range(warmup):
        step(x, y)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        runs.append(1000 * (time.perf_counter() - start) / steps)
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs)}


def speed(
    batch_size: int = 100, repeats: int = 7, steps: int = 20, validation: bool = False
) -> dict:
    """ms per step of plain torch, vdppl (SVI) and vdppl (ELBO module + torch.optim)."""
    pyro.clear_param_store()
    pyro.enable_validation(validation)
    torch.manual_seed(0)
    x = torch.rand(batch_size, 784)
    y = torch.randint(0, 10, (batch_size,))
    results = {
        "plain": time_steps(plain_sparse_vd_step(lenet300()), x, y, repeats=repeats, steps=steps)
    }
    for name, step in vdppl_steps(lenet300()).items():
        results[f"vdppl_{name}"] = time_steps(step, x, y, repeats=repeats, steps=steps)
    plain = results["plain"]["median"]
    return {
        "arch": "lenet300",
        "backend": "pyro",
        "batch_size": batch_size,
        "validation": validation,
        "torch_threads": torch.get_num_threads(),
        "ms_per_step": {k: v["median"] for k, v in results.items()},
        "ms_min_max": {k: [v["min"], v["max"]] for k, v in results.items()},
        "ratio_to_plain": {k: v["median"] / plain for k, v in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--validation", action="store_true", help="keep Pyro's validation on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = speed(args.batch_size, args.repeats, args.steps, args.validation)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"LeNet-300-100, batch {args.batch_size}, {out['torch_threads']} torch threads, "
        f"validation {'on' if args.validation else 'off'}"
    )
    for name, ms in out["ms_per_step"].items():
        lo, hi = out["ms_min_max"][name]
        print(
            f"  {name:<20} {ms:7.2f} ms/step  (min {lo:.2f}, max {hi:.2f})  "
            f"x{out['ratio_to_plain'][name]:.2f}"
        )


if __name__ == "__main__":
    main()
