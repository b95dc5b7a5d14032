"""Pyro measurements behind ``vdppl bench speed`` and ``vdppl bench variance``.

``speed`` times one SVI step of LeNet-300-100 or LeNet-5 (batch 100) for: vdppl with
local reparameterization (through ``pyro.infer.SVI``, and through the ELBO module with one
``torch.optim.Adam``); vdppl sampling one weight tensor per minibatch; a plain
hand-written torch implementation of the same sparse-VD maths (per layer ``theta``,
``log_sigma2``, bias; LRT; Molchanov's KL from :mod:`vdppl.kl`; the data term scaled by
``N / batch``; one Adam); and the deterministic network.

``variance`` is the analogue of Table 1 of Kingma et al. (2015): the empirical variance
of the minibatch gradient of the ELBO with respect to the means of the bottom and top
layers, for local reparameterization, a separate weight sample per example, and one
weight sample per minibatch.
"""

from __future__ import annotations

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
from vdppl import models
from vdppl.pyro.elbo import LocalReparamELBO
from vdppl.pyro.local_reparam_messenger import LocalReparamMessenger
from vdppl.pyro.models import build

__all__ = ["network", "plain_sparse_vd_step", "speed", "time_steps", "variance", "vdppl_steps"]

N_TRAIN = 60_000
INPUT = (1, 28, 28)


def network(arch: str) -> torch.nn.Sequential:
    """``lenet300`` or ``lenet5`` for 28x28 images, as ``vdppl train --arch`` builds it."""
    return build(models.architecture(arch, 10), INPUT)


def plain_sparse_vd_step(net: torch.nn.Sequential, lr: float = 1e-3) -> Callable:
    """A hand-written sparse-VD step for ``net`` (no Pyro): LRT in every Linear/Conv2d."""
    params = {}
    for i, layer in enumerate(net):
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            theta = layer.weight.detach().clone().requires_grad_()
            log_sigma2 = torch.full_like(theta, -10.0).requires_grad_()
            params[i] = (theta, log_sigma2, layer.bias.detach().clone().requires_grad_())
    optim = torch.optim.Adam([p for group in params.values() for p in group], lr=lr)

    def step(x, y):
        optim.zero_grad()
        h, kl = x, 0.0
        for i, layer in enumerate(net):
            if i not in params:
                h = layer(h)
                continue
            theta, log_sigma2, bias = params[i]
            if isinstance(layer, torch.nn.Linear):
                mean, var = F.linear(h, theta, bias), F.linear(h * h, log_sigma2.exp())
            else:
                mean = F.conv2d(h, theta, bias, layer.stride, layer.padding)
                var = F.conv2d(h * h, log_sigma2.exp(), None, layer.stride, layer.padding)
            h = mean + torch.sqrt(var + 1e-8) * torch.randn_like(mean)
            kl = kl + vdkl.kl_molchanov(vdkl.log_alpha_from_sigma2(theta, log_sigma2)).sum()
        loss = F.cross_entropy(h, y, reduction="sum") * (N_TRAIN / len(x)) + kl
        loss.backward()
        optim.step()
        return loss.item()

    return step


def deterministic_step(net: torch.nn.Sequential, lr: float = 1e-3) -> Callable:
    """The plain network with cross-entropy and Adam: the floor of any step's cost."""
    net = net.train()
    optim = torch.optim.Adam(net.parameters(), lr=lr)

    def step(x, y):
        optim.zero_grad()
        loss = F.cross_entropy(net(x), y, reduction="sum") * (N_TRAIN / len(x))
        loss.backward()
        optim.step()
        return loss.item()

    return step


def _model_and_guide(net: torch.nn.Sequential, n_train: int = N_TRAIN, **guide_options):
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = bnn(x)
        with pyro.plate("data", n_train, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model, vd.AutoVariationalDropout(model, **guide_options)


def vdppl_steps(net: torch.nn.Sequential, lr: float = 1e-3) -> dict[str, Callable]:
    """vdppl's step: ``SVI`` with LRT, ``SVI`` with one weight sample per minibatch, and
    the LRT ELBO as a module driven by one ``torch.optim.Adam`` (Pyro's PyTorch idiom)."""
    model, guide = _model_and_guide(net)
    lrt = SVI(model, guide, pyro.optim.Adam({"lr": lr}), LocalReparamELBO())
    sampled = SVI(model, guide, pyro.optim.Adam({"lr": lr}), LocalReparamELBO(local_reparam=False))
    loss_module = LocalReparamELBO()(model, guide)
    optim: list[torch.optim.Optimizer] = []

    def module_step(x, y):
        loss = loss_module(x, y)
        if not optim:  # parameters exist after the first call
            optim.append(torch.optim.Adam(loss_module.parameters(), lr=lr))
        optim[0].zero_grad()
        loss.backward()
        optim[0].step()
        return loss.item()

    return {
        "vdppl_lrt": lrt.step,
        "vdppl_weight_sample": sampled.step,
        "vdppl_lrt_torch_optim": module_step,
    }


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
    arch: str = "lenet300",
    batch_size: int = 100,
    repeats: int = 7,
    steps: int = 20,
    warmup: int = 10,
    validation: bool = False,
) -> dict:
    """ms per step of each implementation (median of ``repeats`` runs of ``steps``)."""
    pyro.clear_param_store()
    pyro.enable_validation(validation)
    torch.manual_seed(0)
    x = torch.rand(batch_size, *INPUT)
    y = torch.randint(0, 10, (batch_size,))
    steps_by_name = {
        "plain": plain_sparse_vd_step(network(arch)),
        "deterministic": deterministic_step(network(arch)),
        **vdppl_steps(network(arch)),
    }
    timing = {
        name: time_steps(step, x, y, warmup=warmup, repeats=repeats, steps=steps)
        for name, step in steps_by_name.items()
    }
    plain = timing["plain"]["median"]
    return {
        "arch": arch,
        "backend": "pyro",
        "batch_size": batch_size,
        "validation": validation,
        "threads": torch.get_num_threads(),
        "ms_per_step": {k: v["median"] for k, v in timing.items()},
        "ms_min_max": {k: [v["min"], v["max"]] for k, v in timing.items()},
        "ratio_to_plain": {k: v["median"] / plain for k, v in timing.items()},
    }


# ------------------------------------------------------------------ variance
class _PerExampleMessenger(LocalReparamMessenger):
    """Like ``local_reparam``, but samples a whole weight matrix for every example."""

    def _pyro_vdppl_linear(self, msg) -> None:
        base = self._lookup(msg, 2)
        if base is None:
            return
        x, _, *rest = msg["args"]
        bias = rest[0] if rest else msg["kwargs"].get("bias")
        weights = base.loc + base.scale * torch.randn((len(x), *base.loc.shape))
        out = torch.einsum("bi,boi->bo", x, weights)
        msg["value"] = out if bias is None else out + bias
        msg["done"] = True

    def _pyro_vdppl_conv(self, msg) -> None:
        if self._lookup(msg, msg["args"][1].dim()) is not None:
            raise NotImplementedError("per-example weight samples are implemented for dense layers")


class _PerExampleELBO(LocalReparamELBO):
    def _handlers(self):
        stack = super()._handlers()
        stack.enter_context(_PerExampleMessenger())
        return stack

    def __init__(self):
        super().__init__(local_reparam=False)


ESTIMATORS = {
    "local_reparam": LocalReparamELBO,
    "weight_per_example": _PerExampleELBO,
    "weight_per_minibatch": lambda: LocalReparamELBO(local_reparam=False),
}


def variance(
    stage: str = "init",
    epochs: int = 10,
    batch_size: int = 100,
    repeats: int = 200,
    limit_train: int | None = None,
    seed: int = 0,
) -> dict:
    """Variance of the minibatch gradient w.r.t. the bottom and top layers' means.

    LeNet-300-100 on the MNIST subset (``vdppl.data.load("mnist5k")``) with variational
    dropout B (multiplicative noise per weight, alpha <= 1) started at alpha = 1 (dropout
    p = 0.5), as in Kingma et al.'s Table 1. ``stage="trained"`` first fits ``epochs``
    epochs with the LRT estimator. Each of ``repeats`` estimates uses a fresh random
    minibatch of ``batch_size``; the figure is the variance per element, averaged over the
    layer's weights.
    """
    from vdppl.data import load

    if stage not in ("init", "trained"):
        raise ValueError(f"stage must be 'init' or 'trained', got {stage!r}")
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    pyro.enable_validation(False)
    data = load("mnist5k")
    x, y = torch.as_tensor(data.x_train[:limit_train]), torch.as_tensor(data.y_train[:limit_train])
    model, guide = _model_and_guide(
        network("lenet300"), n_train=len(x), noise="multiplicative", init_log_sigma2=0.0
    )
    guide(x[:2], y[:2])
    if stage == "trained":
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), LocalReparamELBO())
        for _ in range(epochs):
            for batch in torch.randperm(len(x)).split(batch_size):
                svi.step(x[batch], y[batch])
    sites = guide.dropout_sites
    layers = {"bottom": sites[0], "top": sites[-1]}
    means = {
        k: pyro.param(f"AutoVariationalDropout.theta.{s}").unconstrained()
        for k, s in layers.items()
    }
    result = {}
    for name, make in ESTIMATORS.items():
        elbo = make()
        grads = {k: [] for k in layers}
        for _ in range(repeats):
            batch = torch.randperm(len(x))[:batch_size]
            loss = elbo.differentiable_loss(model, guide, x[batch], y[batch])
            for k, g in zip(layers, torch.autograd.grad(loss, list(means.values())), strict=True):
                grads[k].append(g)
        result[name] = {k: torch.stack(g).var(0).mean().item() for k, g in grads.items()}
    lrt = result["local_reparam"]
    return {
        "estimators": result,
        "ratio_to_local_reparam": {
            name: {k: v[k] / lrt[k] for k in v} for name, v in result.items()
        },
        "backend": "pyro",
        "stage": stage,
        "epochs": epochs if stage == "trained" else 0,
        "batch_size": batch_size,
        "repeats": repeats,
        "train_examples": len(x),
    }
