"""Pyro measurements behind ``vdppl bench speed`` and ``vdppl bench variance``.

``speed`` times one SVI step of LeNet-300-100 or LeNet-5 (``torch.nn.Sequential`` built
by :func:`vdppl.pyro.models.build` from the specs of :mod:`vdppl.models`; random 28x28
inputs, batch 100 by default) for:

* ``vdppl_lrt``: ``pyro.infer.SVI`` with :class:`~vdppl.pyro.LocalReparamELBO` and
  :class:`~vdppl.pyro.AutoVariationalDropout` (sparse VD) on the
  :func:`~vdppl.pyro.bayesianize`'d network, ``pyro.optim.Adam``;
* ``vdppl_weight_sample``: the same with ``LocalReparamELBO(local_reparam=False)``, one
  weight tensor sampled per minibatch;
* ``plain``: the same sparse-VD maths in torch alone: per layer ``theta``, ``log_sigma2``
  and a bias; ``mean = F.linear(h, theta, b)``, ``var = F.linear(h**2,
  exp(log_sigma2))`` (``F.conv2d`` for conv layers), ``h = mean + sqrt(var + 1e-8) * eps``;
  loss ``N / B * cross_entropy_sum + sum KL_molchanov(log_alpha)`` (:mod:`vdppl.kl`); one
  ``torch.optim.Adam``;
* ``deterministic``: the network with cross-entropy and ``torch.optim.Adam``;
* (extra) ``vdppl_lrt_torch_optim``: the LRT ELBO as a module (``LocalReparamELBO()(model,
  guide)``) driven by one ``torch.optim.Adam``, Pyro's PyTorch idiom, without ``SVI``.

All start from the same initial weights (learning rate 1e-3); times come from
:func:`vdppl.bench.time_interleaved`.

``variance`` is the analogue of Table 1 of [1]; see :func:`variance`.

[1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl import bench as shared
from vdppl import kl as vdkl
from vdppl import models
from vdppl.pyro.elbo import LocalReparamELBO
from vdppl.pyro.local_reparam_messenger import LocalReparamMessenger
from vdppl.pyro.models import build

__all__ = [
    "deterministic_step",
    "network",
    "plain_sparse_vd_step",
    "speed",
    "variance",
    "vdppl_steps",
]

INPUT = (1, 28, 28)
_PARAM = "AutoVariationalDropout.{kind}.{site}"


def network(arch: str) -> torch.nn.Sequential:
    """``lenet300`` or ``lenet5`` for 28x28 images, as ``vdppl train --arch`` builds it."""
    return build(models.architecture(arch, 10), INPUT)


def plain_sparse_vd_step(
    net: torch.nn.Sequential,
    lr: float = 1e-3,
    n_train: int = shared.SPEED_N_TRAIN,
    init_log_sigma2: float = -10.0,
) -> Callable:
    """A hand-written sparse-VD step for ``net`` (no Pyro): LRT in every Linear/Conv2d.

    ``step(x, y)`` returns the loss before the update; ``theta`` starts at ``net``'s weights.
    """
    params = {}
    for i, layer in enumerate(net):
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            theta = layer.weight.detach().clone().requires_grad_()
            log_sigma2 = torch.full_like(theta, init_log_sigma2).requires_grad_()
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
            h = mean + torch.sqrt(var + vdkl.LRT_EPS) * torch.randn_like(mean)
            kl = kl + vdkl.kl_molchanov(vdkl.log_alpha_from_sigma2(theta, log_sigma2)).sum()
        loss = F.cross_entropy(h, y, reduction="sum") * (n_train / len(x)) + kl
        loss.backward()
        optim.step()
        return loss.item()

    return step


def deterministic_step(
    net: torch.nn.Sequential, lr: float = 1e-3, n_train: int = shared.SPEED_N_TRAIN
) -> Callable:
    """The plain network with cross-entropy and Adam: the floor of any step's cost."""
    net = net.train()
    optim = torch.optim.Adam(net.parameters(), lr=lr)

    def step(x, y):
        optim.zero_grad()
        loss = F.cross_entropy(net(x), y, reduction="sum") * (n_train / len(x))
        loss.backward()
        optim.step()
        return loss.item()

    return step


def _model_and_guide(
    net: torch.nn.Sequential, n_train: int = shared.SPEED_N_TRAIN, **guide_options
):
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = bnn(x)
        with pyro.plate("data", n_train, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model, vd.AutoVariationalDropout(model, **guide_options)


def vdppl_steps(
    net: torch.nn.Sequential, lr: float = 1e-3, extras: bool = True, init_log_sigma2: float = -10.0
) -> dict[str, Callable]:
    """vdppl's steps by implementation name (they share the guide's parameters)."""
    model, guide = _model_and_guide(net, init_log_sigma2=init_log_sigma2)
    out = {
        "vdppl_lrt": SVI(model, guide, pyro.optim.Adam({"lr": lr}), LocalReparamELBO()).step,
        "vdppl_weight_sample": SVI(
            model, guide, pyro.optim.Adam({"lr": lr}), LocalReparamELBO(local_reparam=False)
        ).step,
    }
    if extras:
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

        out["vdppl_lrt_torch_optim"] = module_step
    return out


def speed(
    arch: str = "lenet300",
    batch_size: int = 100,
    repeats: int = 7,
    steps: int = 20,
    warmup: int = 10,
    seed: int = 0,
    validation: bool = False,
    extras: bool = True,
) -> dict:
    """ms per step of each implementation (see the module docstring).

    :param repeats: timed rounds; each runs ``steps`` steps of every implementation.
    :param warmup: steps of each implementation after its first call.
    :param seed: initial weights, data and noise (``pyro.set_rng_seed``).
    :param validation: Pyro's argument validation during the timed steps (off, as
        ``vdppl train`` runs).
    :param extras: also time ``vdppl_lrt_torch_optim``.
    :return: the JSON of :func:`vdppl.bench.speed_result`.
    """
    shared.check_speed_args(arch, batch_size, repeats, steps, warmup)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    net = network(arch)
    x = torch.rand(batch_size, *INPUT)
    y = torch.randint(0, 10, (batch_size,))
    steps_by_name = {
        **vdppl_steps(copy.deepcopy(net), extras=extras),
        "plain": plain_sparse_vd_step(copy.deepcopy(net)),
        "deterministic": deterministic_step(copy.deepcopy(net)),
    }

    def runner(step):
        def run(n):
            for _ in range(n):
                step(x, y)

        return run

    with pyro.validation_enabled(validation):
        timing = shared.time_interleaved(
            {name: runner(step) for name, step in steps_by_name.items()},
            warmup=warmup,
            repeats=repeats,
            steps=steps,
        )
    return shared.speed_result(
        timing,
        arch=arch,
        backend="pyro",
        batch_size=batch_size,
        seed=seed,
        machine=shared.machine_info(
            torch_threads=torch.get_num_threads(),
            torch_interop_threads=torch.get_num_interop_threads(),
        ),
        validation=validation,
        repeats=repeats,
        steps=steps,
        warmup=warmup,
    )


# ------------------------------------------------------------------ variance
class _PerExampleMessenger(LocalReparamMessenger):
    """Like ``local_reparam``, but samples a whole weight matrix for every example::

    out[b] = x[b] @ (mu + sigma * eps[b]).T + bias,   eps[b] ~ N(0, 1) of W's shape
    """

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
    def __init__(self):
        super().__init__(local_reparam=False)

    def _handlers(self):
        stack = super()._handlers()
        stack.enter_context(_PerExampleMessenger())
        return stack


def variance(
    stage: str = "init",
    epochs: int = 10,
    batch_size: int = 100,
    repeats: int = 100,
    limit_train: int | None = None,
    seed: int = 0,
    dataset: str = shared.VARIANCE_DATASET,
) -> dict:
    """Empirical variance of the minibatch gradient of the ELBO, three estimators.

    The study of :func:`vdppl.bench.bench_variance` (the analogue of [1]'s Table 1) with
    torch's initial weights; the bottom layer's weight is 300x784, the top's 10x100.
    ``weight_per_example`` is a handler that replaces each linear layer by
    ``einsum("bi,boi->bo", x, W_b)`` with a weight matrix ``W_b`` sampled per example;
    ``local_reparam`` is :class:`~vdppl.pyro.LocalReparamELBO` and
    ``weight_per_minibatch`` is ``LocalReparamELBO(local_reparam=False)``.

    :param dataset: another image dataset for quick runs (``--smoke`` uses ``digits``);
        the network's input layer follows its image size.
    :return: :meth:`vdppl.bench.GradientVariance.result`'s JSON.
    """
    from vdppl.data import load

    shared.check_variance_args(stage, epochs, batch_size, repeats, limit_train)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = load(dataset)
    x, y = torch.as_tensor(data.x_train[:limit_train]), torch.as_tensor(data.y_train[:limit_train])
    n = len(x)
    net = build(models.architecture(shared.VARIANCE_ARCH, data.num_classes), data.input_shape)
    model, guide = _model_and_guide(net, n_train=n)
    with pyro.validation_enabled(False):
        guide(x[:2], y[:2])
        sites = guide.dropout_sites
        with torch.no_grad():  # alpha = 1 for every weight
            for site in sites:
                theta = pyro.param(_PARAM.format(kind="theta", site=site))
                log_sigma2 = pyro.param(_PARAM.format(kind="log_sigma2", site=site))
                log_sigma2.unconstrained().copy_(torch.log(theta * theta + 1e-8))
        if stage == "trained":
            svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), LocalReparamELBO())
            rng = np.random.default_rng(seed)
            for _ in range(epochs):
                for batch in shared.epoch_batches(n, batch_size, rng):
                    svi.step(x[batch], y[batch])
        layers = {"bottom": sites[0], "top": sites[-1]}
        kinds = ("theta", "log_sigma2")
        targets = {
            (kind, layer): pyro.param(_PARAM.format(kind=kind, site=site)).unconstrained()
            for kind in kinds
            for layer, site in layers.items()
        }
        estimators = {
            "local_reparam": LocalReparamELBO(),
            "weight_per_example": _PerExampleELBO(),
            "weight_per_minibatch": LocalReparamELBO(local_reparam=False),
        }
        result = shared.GradientVariance()
        for batch in shared.minibatches(n, batch_size, repeats, seed):
            for name, elbo in estimators.items():
                loss = elbo.differentiable_loss(model, guide, x[batch], y[batch])
                grads = torch.autograd.grad(loss, list(targets.values()))
                for (kind, layer), g in zip(targets, grads, strict=True):
                    result.add(name, kind, layer, g.numpy())
    return result.result(
        kinds,
        backend="pyro",
        stage=stage,
        epochs=epochs if stage == "trained" else 0,
        batch_size=batch_size,
        repeats=repeats,
        train_examples=n,
        seed=seed,
        layers=layers,
        dataset=dataset,
    )
