"""The NumPyro side of ``vdppl train``: model, guide and ELBO for each method, and the loop.

The CLI (:mod:`vdppl.cli`) is backend-free; it drives a :class:`Trainer`, which owns
everything JAX: the Flax network from :mod:`vdppl.models` (:mod:`vdppl.numpyro.models`),
the model written the way a NumPyro user writes it, the guide and ELBO that ``--method``
names, checkpoints, and predictions as NumPy arrays. Each step is one jitted
``svi.update`` on a minibatch of ``B`` rows of ``N``, minimising::

    loss = -(N / B) * sum_batch log p(y | x, w) + kl_weight * KL(q || p)

(one local-reparameterization sample per example [1]; the KL by [2]'s approximation for
sparse VD, [1]'s for vd-a / vd-b; [3]'s deterministic objective for gradreg; ``-log p(w)``
of the Normal prior for MAP). ``kl_weight`` is an argument of the compiled step, so the
warm-up never recompiles, and the batches of an epoch all have ``B`` rows (one compiled
shape).

Randomness is explicit and reproducible from ``config.seed`` alone: the network's
initial weights, SVI's key in epoch ``e`` (``fold_in(fold_in(key(seed), stream), e)``)
and the shuffling (a NumPy ``Generator`` seeded with ``(seed, e)``) depend on nothing
else, so a run resumed from its checkpoint continues to the same result as an
uninterrupted one. The keys are JAX's ``"unsafe_rbg"`` implementation
(:data:`PRNG_IMPL`): the default threefry generator compiles to loops that XLA's CPU
backend takes seconds to compile for every shape drawn, and compilation is most of a
short run (``vdppl train --backend numpyro``, measured once on two cores: 32 s with
threefry, 21 s with this).

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) "Variational Dropout Sparsifies Deep Neural
    Networks", arXiv:1701.05369.
[3] Unlu, Aitchison (2020) "Gradient Regularisation as Approximate Variational
    Inference", arXiv:2011.10443.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax import random
from numpyro.distributions import constraints
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.svi import SVIState
from numpyro.optim import optax_to_numpyro

import vdppl.numpyro as vd
from vdppl import kl as vdkl
from vdppl import models
from vdppl.numpyro.gradreg import GradientRegularizedELBO, variance_lr
from vdppl.numpyro.models import build
from vdppl.numpyro.sparsity import to_out_in
from vdppl.runs import Config, check_pretrained, guide_options, kl_weight_at, lr_factor_at
from vdppl.sparsity import SparsityReport, report_from_masks

if TYPE_CHECKING:
    import arviz

    from vdppl.data.dataset import Dataset

__all__ = ["PRNG_IMPL", "Trainer", "optimizer"]

#: JAX PRNG implementation of every key (see the module docstring).
PRNG_IMPL = "unsafe_rbg"
#: Independent PRNG streams, ``fold_in(key(seed), stream)``.
_INIT, _SVI_INIT, _TRAIN, _PREDICT, _IDATA, _OUTPUTS = range(6)
#: Rows per jitted prediction call (bounds memory; one compiled shape per data set).
CHUNK = 1000
#: Posterior draws per jitted prediction call.
DRAW_CHUNK = 10


def optimizer(config: Config, steps_per_epoch: int):
    """Adam (torch's defaults, as the Pyro trainer) as a NumPyro optimizer, via optax.

    ``--lr-schedule paper`` multiplies the learning rate at step ``t`` by
    ``lr_factor_at(t // steps_per_epoch)`` (constant for half the epochs, then linear to
    0, as [2] trains); the step count lives in the optimizer state, so a
    resumed run continues the schedule. ``--variance-lr`` gives the guide's variance
    parameters (``log_sigma2.*``, ``log_alpha.*``, ``scale.*``) their own learning rate
    with :func:`vdppl.numpyro.gradreg.variance_lr` (their gradients are small under [3]'s
    objective: at the means' rate they converge slowly).
    """

    def rate(lr: float):
        if config.lr_schedule == "constant":
            return lr
        factors = jnp.asarray(
            [lr_factor_at(e, config.epochs, config.lr_schedule) for e in range(config.epochs)]
        )
        return lambda count: lr * factors[jnp.minimum(count // steps_per_epoch, config.epochs - 1)]

    if config.variance_lr is None or config.variance_lr == config.lr:
        return optax_to_numpyro(optax.adam(rate(config.lr)))
    return variance_lr(rate(config.lr), rate(config.variance_lr))


def _in_chunks(fn: Callable, x: np.ndarray, axis: int = 0) -> np.ndarray:
    """``fn(rows, start)`` over ``x`` in chunks of :data:`CHUNK` rows, concatenated on
    ``axis``; the last chunk is padded (its last row repeated) so every call has one shape."""
    size = min(CHUNK, len(x))
    out = []
    for start in range(0, len(x), size):
        rows = x[start : start + size]
        pad = size - len(rows)
        if pad:
            rows = np.concatenate([rows, np.repeat(rows[-1:], pad, 0)])
        value = np.asarray(fn(jnp.asarray(rows), start))
        out.append(np.take(value, np.arange(size - pad), axis=axis))
    return np.concatenate(out, axis=axis)


class Trainer:
    """Fit one ``Config`` on one dataset with NumPyro (the interface of
    :class:`vdppl.pyro.train.Trainer`)."""

    def __init__(self, config: Config, dataset: Dataset):
        self.config, self.data = config, dataset
        pretrained = check_pretrained(config.pretrained, config) if config.pretrained else None
        self.key = random.key(config.seed, impl=PRNG_IMPL)
        self.classification = dataset.task == "classification"
        self.variational = config.method != "map"
        outputs = dataset.num_classes if self.classification else 1
        layers = models.architecture(config.arch, outputs, tuple(config.hidden))
        self.net = build(layers, tuple(dataset.input_shape))
        prior = vd.LogUniform() if self.variational else dist.Normal(0.0, config.map_prior_scale)
        self.bnn = self._bayesianize(prior)
        if pretrained is not None:
            self.bnn = self._bayesianize(prior, self._pretrained(pretrained))
        self.n_train = len(dataset.x_train)
        self.x_train, self.y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
        if config.method == "map":
            self.guide = AutoDelta(self.model, init_loc_fn=vd.init_to_module)
            self.elbo = Trace_ELBO()
        elif config.method == "gradreg":
            self.guide = vd.AutoVariationalDropout(self.model, **guide_options(config))
            self.elbo = GradientRegularizedELBO()
        else:
            self.guide = vd.AutoVariationalDropout(self.model, **guide_options(config))
            self.elbo = vd.LocalReparamELBO()
        steps = len(self._batches(0))
        self.svi = SVI(self.model, self.guide, optimizer(config, steps), self.elbo)
        self.state = self.svi.init(
            self._stream(_SVI_INIT), self.x_train[:2], self.y_train[:2], train=False
        )
        self._step = jax.jit(self._update)
        self._outputs = jax.jit(self._deterministic_outputs)
        self._probs = jax.jit(self._lrt_probs, static_argnums=3)

    def _stream(self, stream: int):
        return random.fold_in(self.key, stream)

    def _bayesianize(self, prior, variables=None) -> vd.BayesianModule:
        """The network with ``prior`` on its kernels, initialised by Flax (one jitted
        ``module.init``) or from ``variables``."""
        example = jnp.zeros((1, *self.net.input_shape))
        if variables is None:
            init = jax.jit(functools.partial(self.net.module.init, train=False))
            variables = init(self._stream(_INIT), example)
        return vd.bayesianize(
            self.net.module,
            example,
            prior=prior,
            variables=variables,
            module_kwargs={"train": False},
        )

    # ------------------------------------------------------------------ model
    def model(self, x, y=None, train: bool = False):
        """The Bayesian network and its likelihood, minibatch-scaled by the plate.

        ``train=True`` makes BatchNorm use (and update) batch statistics. A prediction
        batch larger than the training set (a tiny ``--limit-train``) is one full plate.
        """
        out = self.bnn(self.net.prepare(x), train=train)
        n = x.shape[0]
        plate = numpyro.plate("data", max(self.n_train, n), subsample_size=n)
        if self.classification:
            logits = numpyro.deterministic("logits", out)
            with plate:
                return numpyro.sample("y", dist.Categorical(logits=logits), obs=y)
        mean = numpyro.deterministic("mean", out.squeeze(-1))
        if self.config.obs_noise == "learned":  # a point estimate, for every method
            sigma = numpyro.param("obs_noise", 1.0, constraint=constraints.positive)
        else:
            sigma = float(self.config.obs_noise)
        with plate:
            return numpyro.sample("y", dist.Normal(mean, sigma), obs=y)

    def _pretrained(self, path: Path) -> dict:
        """Flax variables of the network in a run's checkpoint: kernels from its MAP point
        (``<site>_auto_loc``) or VD means (``theta.<site>``), biases, BatchNorm parameters
        and statistics as fitted."""
        params = vd.load(path)["params"]

        def value(keys: list[str]):
            key = next((k for k in keys if k in params), None)
            if key is None:
                raise ValueError(f"--pretrained {path.parent} has no value for {keys[0]}")
            return params[key]

        kernels = {
            layer.site: value([f"{layer.site}_auto_loc", f"theta.{layer.site}"])
            for layer in self.bnn.layers
        }
        names = [layer.bias for layer in self.bnn.layers if layer.bias is not None]
        names += [self.bnn.param_name(path) for path in self.bnn.deterministic]
        for name in names:
            value([name])
        return self.bnn.variables(params, kernels)

    # --------------------------------------------------------------- training
    def _update(self, state: SVIState, x, y, rows, beta):
        kwargs = {"kl_weight": beta} if self.variational else {}
        return self.svi.update(state, x[rows], y[rows], train=True, **kwargs)

    def _batches(self, epoch: int) -> jax.Array:
        """Row indices of the epoch's minibatches, ``(steps, batch)``: a permutation drawn
        by a NumPy generator seeded with ``(seed, epoch)``, its last batch filled up with
        the permutation's first rows, so every example is seen each epoch and every step
        has the same shape (one compiled step)."""
        batch = min(self.config.batch_size, self.n_train)
        steps = math.ceil(self.n_train / batch)
        order = np.random.default_rng((self.config.seed, epoch)).permutation(self.n_train)
        order = np.concatenate([order, order[: steps * batch - self.n_train]])
        return jnp.asarray(order.reshape(steps, batch))

    def epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the shuffled training set; returns per-example loss terms.

        Each step's loss estimates the whole training set's negative ELBO (the plate scales
        the minibatch's log-likelihood by ``N / B``), so ``loss`` is their mean over the
        epoch's steps divided by ``N``: nats per example, as the Pyro trainer records it;
        ``kl`` is the KL at the epoch's end over ``N`` and ``data = loss - beta * kl``.

        :raises FloatingPointError: if a step's loss is not finite; the state stays at the
            epoch's start (the last good checkpoint).
        """
        beta = kl_weight_at(epoch, self.config.warmup, self.config.warmup_start)
        state = self.state._replace(rng_key=random.fold_in(self._stream(_TRAIN), epoch))
        start = time.perf_counter()
        losses = []
        for rows in self._batches(epoch):
            state, loss = self._step(state, self.x_train, self.y_train, rows, jnp.float32(beta))
            losses.append(loss)
        losses = np.asarray(jax.device_get(losses), np.float64)  # waits for the last step
        seconds = time.perf_counter() - start
        bad = ~np.isfinite(losses)
        if bad.any():
            raise FloatingPointError(
                f"the loss became {losses[bad][0]} in epoch {epoch + 1}: training diverged. "
                "Lower --lr, or lengthen --warmup; the last good checkpoint is kept."
            )
        self.state = state
        kl = self.kl()
        loss = float(losses.mean()) / self.n_train
        return {
            "loss": loss,
            "kl": kl / self.n_train,
            "data": loss - beta * kl / self.n_train,
            "kl_weight": beta,
            "seconds": seconds,
        }

    @property
    def params(self) -> dict:
        """Fitted parameters with the mutable state (BatchNorm statistics) merged in."""
        return {**self.svi.get_params(self.state), **(self.state.mutable_state or {})}

    def observation_noise(self) -> float:
        """The regression head's observation noise std (standardized targets): fixed by
        ``--obs-noise``, or the fitted point estimate ``obs_noise`` in :attr:`params`."""
        if self.config.obs_noise != "learned":
            return float(self.config.obs_noise)
        return float(self.params["obs_noise"])

    def kl(self) -> float:
        """The analytic KL of the weight sites (0 for MAP, which has none)."""
        if not self.variational:
            return 0.0
        approx = self.guide.kl_approximation
        return sum(
            float(np.sum(vdkl.kl_log_uniform(np.asarray(la), approx)))
            for la in self.guide.log_alpha(self.params).values()
        )

    # ------------------------------------------------------------ predictions
    def _point(self, params: dict) -> dict:
        """Weights of the deterministic predictor: pruned means (MAP: the point)."""
        if self.variational:
            return self.guide.pruned_median(params, self.config.threshold)
        return self.guide.median(params)

    def _deterministic_outputs(self, params: dict, x, key):
        run = substitute(substitute(self.model, data=params), data=self._point(params))
        tr = trace(seed(run, key)).get_trace(x)
        return tr["logits" if self.classification else "mean"]["value"]

    def pruned_outputs(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the deterministic predictor: the pruned mean network (MAP: the
        point estimate)."""
        params, key = self.params, self._stream(_OUTPUTS)
        return _in_chunks(lambda rows, _: self._outputs(params, rows, key), np.asarray(x))

    def _lrt_probs(self, params: dict, x, key, num_samples: int):
        logits = vd.predict(
            self.model,
            self.guide,
            params,
            key,
            x,
            mode="lrt",
            num_samples=num_samples,
            threshold=self.config.threshold,
            return_sites=["logits"],
        )["logits"]
        return jax.nn.softmax(logits, -1)

    def predictive_probs(self, x: np.ndarray, num_samples: int) -> np.ndarray:
        """Class probabilities of ``num_samples`` LRT draws, shape ``(draws, n, classes)``
        (MAP: one draw, the point estimate's)."""
        x = np.asarray(x)
        if not self.variational:
            logits = self.pruned_outputs(x)
            return np.asarray(jax.nn.softmax(logits, -1))[None]
        params, key = self.params, self._stream(_PREDICT)

        def chunk(rows, start):
            groups = []
            for first in range(0, num_samples, DRAW_CHUNK):
                size = min(DRAW_CHUNK, num_samples - first)
                sub = random.fold_in(random.fold_in(key, start), first)
                groups.append(self._probs(params, rows, sub, size))
            return jnp.concatenate(groups)

        return _in_chunks(chunk, x, axis=1)

    def inference_data(
        self,
        x: np.ndarray,
        y: np.ndarray,
        num_samples: int,
        include_x: bool,
        progress: bool = False,
    ) -> arviz.InferenceData:
        """ArviZ InferenceData of ``num_samples`` LRT draws on ``(x, y)``; the draws are
        jitted in chunks, so ``progress`` (a Pyro-side bar) has nothing to show here."""
        if not self.variational:
            raise ValueError("MAP runs have no posterior draws")
        return vd.to_inference_data(
            self.model,
            self.guide,
            self.params,
            self._stream(_IDATA),
            np.asarray(x),
            np.asarray(y),
            num_samples=num_samples,
            mode="lrt",
            threshold=self.config.threshold,
            include_x=include_x,
            method=self.config.method,
        )

    def sparsity(self) -> SparsityReport:
        """Per-layer sparsity (MAP: every weight kept)."""
        if self.variational:
            return vd.sparsity_report(self.guide, self.params, self.config.threshold)
        masks = {
            layer.site: np.ones(to_out_in(layer.kernel_init).shape, bool)
            for layer in self.bnn.layers
        }
        return report_from_masks(masks, self.config.threshold)

    def plain_predictor(self) -> dict:
        """The deterministic network without NumPyro, its predict function on NumPy inputs,
        and how many hidden units (features, channels) compression removed.

        Variational dropout: :func:`vdppl.numpyro.compress`'s
        :class:`~vdppl.numpyro.CompressedNetwork` (pruned, dead units removed, the Flax
        module run with the smaller layers; MLPs, LeNet-5 and BatchNorm chains qualify).
        Otherwise (MAP, or a network ``compress`` cannot shrink) the Flax module with its
        masked weights (``module.apply(variables, x)``), no unit removed.
        """
        params, prepare = self.params, self.net.prepare
        if self.variational and not self.bnn.deterministic:
            try:
                small = vd.compress(
                    self.bnn, self.guide, params, self.config.threshold,
                    module_kwargs={"train": False},
                )  # fmt: skip
            except (ValueError, TypeError, NotImplementedError):
                small = None  # e.g. a layer compress cannot shrink: mask only, below
            if small is not None:
                before = sum(layer.shape[-1] for layer in self.bnn.layers)
                apply = jax.jit(lambda x: small(prepare(x)))
                return {"module": small, "predict": lambda x: np.asarray(apply(jnp.asarray(x))),
                        "units_removed": int(before - sum(small.features.values()))}  # fmt: skip
        variables = self.bnn.variables(params, self._point(params))
        module = self.bnn.module
        apply = jax.jit(lambda x: module.apply(variables, prepare(x), train=False))
        return {"module": module, "variables": variables,
                "predict": lambda x: np.asarray(apply(jnp.asarray(x))), "units_removed": 0}  # fmt: skip

    def log_alpha(self) -> dict[str, np.ndarray]:
        """``log alpha`` of every weight site (MAP: none)."""
        if not self.variational:
            return {}
        return {k: np.asarray(v) for k, v in self.guide.log_alpha(self.params).items()}

    # ------------------------------------------------------------ checkpoints
    def save(self, path: Path, **extra: Any) -> None:
        """Parameters (for ``--pretrained``) and the whole SVI state (for ``--resume``),
        written atomically by :func:`vdppl.numpyro.save`."""
        vd.save(path, params=self.params, opt_state=self.state, **extra)

    def load(self, path: Path) -> dict:
        """Continue from a checkpoint of the same configuration; returns its extras."""
        state = vd.load(path)
        loaded = state["opt_state"]
        if not isinstance(loaded, SVIState) or jax.tree.structure(loaded) != jax.tree.structure(
            self.state
        ):
            raise ValueError(
                f"{path} does not hold the SVI state of this run's model and method; resume "
                "a run with the config.json it was written with."
            )
        self.state = loaded
        return state["extra"]
