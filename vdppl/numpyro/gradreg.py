"""``GradientRegularizedELBO``: a deterministic ELBO by a Taylor expansion (NumPyro).

Derivation (Unlu & Aitchison 2020 [1]). For a factorized Gaussian posterior
``q(w) = N(mu, diag(sigma^2))``, expand each example's log-likelihood to second order
around the posterior mean ``mu``::

    E_q[log p(y_i | x_i, w)] ≈ log p(y_i | x_i, mu) + 1/2 tr(Sigma H_i)
                             = log p(y_i | x_i, mu) + 1/2 sum_k sigma_k^2 H_ikk

(the first-order term vanishes because ``E_q[w - mu] = 0``). ``H_i`` is replaced by a
negative-semidefinite curvature ``-C_i``:

* ``curvature="empirical_fisher"`` (the paper's squared-gradient regulariser):
  ``C_ikk = g_ik^2`` with ``g_ik = d log p(y_i | x_i, w) / d w_k`` at ``w = mu``;
* ``curvature="ggn"``: the generalized Gauss-Newton ``J_i^T Lambda_i J_i`` (``Lambda``
  the likelihood's Fisher in the network outputs, [3]), equal to ``-H_i`` for a model
  that is linear in ``w`` (so the expansion is then exact) and to the expectation of the
  squared gradient over ``y ~ p(y | x, mu)``; for ``Normal`` and ``Categorical``
  likelihoods.

The objective, with ``s_i`` the scale of example ``i`` (``N / |B|`` for a minibatch
``B`` of ``N`` examples: the plate's ``subsample_size``, or ``numpyro.handlers.scale``)
and ``beta`` the KL weight::

    ELBO ≈ sum_i s_i [log p(y_i | x_i, mu) - 1/2 sum_k sigma_k^2 C_ikk] - beta * KL(q || p)

Uniform variance (``AutoVariationalDropout(variance="uniform")``, one ``sigma^2`` for
every weight): the penalty is ``1/2 sigma^2 sum_i s_i sum_k C_ikk``, the squared
gradient norm. It draws no random numbers: two evaluations give the same value whatever
the seed.

Which gradients. A data point is an index of the observed sites' plate dims (other
dims of a site's log-density belong to the same point); ``s_i`` is applied as
``sqrt(s_i)`` to each point's log-likelihood before differentiating, so points of sites
with different scales are weighted correctly. Per-example gradients are exact and
vectorised, never a loop over examples:

* weights consumed by :func:`vdppl.numpyro.ops.dense` / :func:`~vdppl.numpyro.ops.conv`
  (layers of :mod:`vdppl.numpyro.nn` and :func:`~vdppl.numpyro.bayesianize`): a zero
  perturbation is added to each layer's output ``z`` and one backward pass gives
  ``delta_i = d log p(y_i) / d z_i`` for all layers. A dense layer ``z = a @ W + b``
  then has ``g_i = a_i delta_i^T`` and::

      sum_k sigma_k^2 g_ik^2 = sum_j delta_ij^2 (a_i**2 @ sigma2)_j
                             = sigma^2 sum_j delta_ij^2 |a_i|^2        (uniform)

  (the leading dim of a layer's input is the data point; for inputs with more dims
  ``g_i`` is formed explicitly); a convolution forms ``g_i`` by ``jax.vmap`` over the
  examples of the kernel's vector-Jacobian product;
* every other latent site with a Normal posterior (a latent offset, say): the
  per-example Jacobian by forward mode (``jax.jacfwd``), one forward pass per element of
  the site (vectorised).

``ggn`` repeats the backward pass once per column of ``Lambda``'s square root
(``jax.vmap`` over them): the output dims of a ``Normal``, the classes of a
``Categorical``.

Requirements: every latent site needs an analytic KL (log-uniform or Normal priors with
Normal guides, as :class:`~vdppl.numpyro.AutoVariationalDropout` and ``AutoNormal``
give for real-valued sites), a weight reaches the likelihood only through the
primitives (or not at all through them), and the likelihood of example ``i`` depends on
example ``i`` only (BatchNorm with batch statistics breaks this: use its running
averages).

Cost. One step needs the forward pass at the mean (one matmul per dense layer, where
the local reparameterization needs two), the penalty's ``a**2 @ sigma2`` (convolutions:
the per-example kernel gradients, ``batch x kernel`` numbers), one backward pass for
``delta`` (one per column with ``ggn``, vmapped), and then the gradient of all of it
(second order). Measured on LeNet-300-100 (784-300-100-10), batch 100, jitted, CPU
(2 cores shared with other work, so rough), median of 30 steps: the MC ELBO
(:class:`~vdppl.numpyro.LocalReparamELBO`) 11 ms, ``empirical_fisher`` 10-12 ms,
``ggn`` 17-18 ms (10 classes). So the squared-gradient objective costs about one MC
step; it pays where the MC ELBO's noise costs steps: no sampling noise in the
gradients (larger learning rates, no variance from weight or pre-activation draws),
variances trained by curvature rather than by noise. It does not pay with wide
outputs under ``ggn`` (one backward pass per output) or with large convolution kernels
and batches (the per-example kernel gradients are materialised).

[1] Unlu, Aitchison (2020) "Gradient Regularisation as Approximate Variational
    Inference", arXiv:2011.10443; Entropy 23(12):1629 (2021).
[2] Unlu, Aitchison (2021) "Variational Laplace for Bayesian neural networks",
    arXiv:2103.00222.
[3] Martens (2020) "New insights and perspectives on the natural gradient method",
    JMLR 21(146), arXiv:1412.1193.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax
from jax import lax, random
from numpyro.distributions.kl import kl_divergence
from numpyro.distributions.util import scale_and_mask
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO
from numpyro.optim import optax_to_numpyro
from numpyro.primitives import Messenger
from numpyro.util import check_model_guide_match

from vdppl.numpyro import ops
from vdppl.numpyro._checks import check_kl_weight
from vdppl.numpyro.distributions import DropoutNormal, base_distribution
from vdppl.numpyro.elbo import KL_WEIGHT_KWARG, _log_prob_sum
from vdppl.options import check_curvature

__all__ = ["VARIANCE_PARAMS", "GradientRegularizedELBO", "is_variance_param", "variance_lr"]

#: First component of the names of :class:`~vdppl.numpyro.AutoVariationalDropout`'s
#: variance parameters (``log_sigma2.<site>``, ``log_sigma2`` for the uniform form,
#: ``log_alpha.<site>``, ``scale.<site>``).
VARIANCE_PARAMS = ("log_sigma2", "log_alpha", "scale")


# ----------------------------------------------------------------- guide at its mean
def _mean(fn: dist.Distribution) -> jax.Array:
    """Posterior mean (median for transformed sites) of a guide distribution."""
    if isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        value = _mean(fn.base_dist)
    elif isinstance(fn, dist.TransformedDistribution):
        value = _mean(fn.base_dist)
        for transform in fn.transforms:
            value = transform(value)
    elif isinstance(fn, dist.Delta):
        value = fn.v
    else:
        value = fn.mean
    return jnp.broadcast_to(value, fn.shape())


def _variance(fn: dist.Distribution) -> jax.Array | None:
    """Variance of a (``.to_event``'d) Normal guide in the site's own space, else None.

    A :class:`~vdppl.numpyro.DropoutNormal` gives its variance unbroadcast: one number
    for the uniform form."""
    base = base_distribution(fn)
    while isinstance(base, dist.ExpandedDistribution):
        base = base_distribution(base.base_dist)
    if isinstance(base, DropoutNormal):
        return base._variance
    return base.variance if isinstance(base, dist.Normal) else None


class _at_mean(Messenger):
    """Guide run: every latent site takes its posterior mean (or the value in
    ``overrides``); the Normal posteriors' variances are kept by site name."""

    def __init__(self, fn: Callable | None = None, overrides: dict | None = None) -> None:
        self.overrides = overrides or {}
        self.variances: dict[str, jax.Array] = {}
        super().__init__(fn)

    def process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        name, fn = msg["name"], msg["fn"]
        variance = _variance(fn)
        if variance is not None:
            self.variances[name] = variance
        msg["value"] = self.overrides[name] if name in self.overrides else _mean(fn)


class _Call(NamedTuple):
    site: str
    op: str  # "vdppl_dense" or "vdppl_conv"
    options: tuple  # conv: strides, padding, dilation, feature_group_count, input_dilation


class _record_layers(Messenger):
    """Model run: each ``dense`` / ``conv`` of a weight with a Normal posterior computes
    its plain output plus ``perturbations[j]`` (its ``j``-th call) and records its input
    and kernel, so that the gradient with respect to the perturbation is ``delta``."""

    def __init__(self, fn=None, posterior_sites=(), perturbations: list | None = None):
        self.posterior_sites = set(posterior_sites)
        self.perturbations = perturbations
        self.values: dict[str, Any] = {}
        self.calls: list[_Call] = []
        self.inputs: list[jax.Array] = []
        self.kernels: list[jax.Array] = []
        self.outputs: list[jax.Array] = []
        super().__init__(fn)

    def postprocess_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["name"] in self.posterior_sites:
            self.values[msg["name"]] = msg["value"]

    def process_message(self, msg) -> None:
        if msg["type"] not in ops.OP_TYPES or msg["value"] is not None:
            return
        x, weight, *_ = msg["args"]
        name = next((n for n, v in self.values.items() if v is weight), None)
        if name is None:  # a point estimate or an unknown weight: plain computation
            return
        out = msg["fn"](*msg["args"], **msg["kwargs"])
        if self.perturbations is not None:
            out = out + self.perturbations[len(self.calls)]
        msg["value"] = out
        self.calls.append(_Call(name, msg["type"], tuple(msg["args"][3:])))
        self.inputs.append(x)
        self.kernels.append(weight)
        self.outputs.append(out)


# ----------------------------------------------------------- per-example "roots"
def _sqrt_scale(site: dict):
    return None if site["scale"] is None else jnp.sqrt(site["scale"])


def _examples(r: jax.Array, site: dict, batch_ndim: int, reduce: bool) -> jax.Array:
    """``r`` (site batch dims + extra dims) as ``(examples, columns)``: plate dims of the
    site index the examples; the other dims are columns, summed when ``reduce``."""
    positions = sorted(
        {batch_ndim + f.dim for f in site["cond_indep_stack"] if f.dim is not None}
        & set(range(batch_ndim))
    )
    r = jnp.moveaxis(r, positions, tuple(range(len(positions))))
    r = jnp.reshape(r, (math.prod(jnp.shape(r)[: len(positions)]), -1))
    return jnp.sum(r, -1, keepdims=True) if reduce else r


def _unwrap(fn: dist.Distribution):
    """The base distribution and the product of the masks of ``.mask()`` wrappers."""
    mask = None
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        if isinstance(fn, dist.MaskedDistribution):
            mask = fn._mask if mask is None else jnp.logical_and(mask, fn._mask)
        fn = fn.base_dist
    return fn, mask


def _ggn_root(site: dict) -> jax.Array:
    """``r_ic = sqrt(s_i) l_c^T f_i`` with ``Lambda = sum_c l_c l_c^T`` (``l`` held fixed),
    so that ``sum_c (d r_ic / d w)^2`` is the GGN of example ``i``."""
    fn = site["fn"]
    base, mask = _unwrap(fn)
    if isinstance(base, dist.Normal):
        root = base.loc * lax.stop_gradient(1.0 / base.scale)
        root = jnp.broadcast_to(root, base.batch_shape + base.event_shape)
    elif isinstance(base, (dist.CategoricalLogits, dist.CategoricalProbs)):
        # Lambda = diag(p) - p p^T = L L^T with L[:, c] = sqrt(p_c) (e_c - p)
        logits = base.logits
        p = lax.stop_gradient(jax.nn.softmax(logits, -1))
        root = jnp.sqrt(p) * (logits - jnp.sum(p * logits, -1, keepdims=True))
    else:
        raise NotImplementedError(
            f"curvature='ggn' supports Normal and Categorical likelihoods, not "
            f"{type(base).__name__} (site {site['name']!r}); use curvature='empirical_fisher'"
        )
    batch_ndim = len(fn.batch_shape)
    weight = jnp.ones(fn.batch_shape)
    weight = scale_and_mask(weight, scale=_sqrt_scale(site), mask=mask)
    weight = jnp.reshape(weight, jnp.shape(weight) + (1,) * (jnp.ndim(root) - batch_ndim))
    return _examples(root * weight, site, batch_ndim, reduce=False)


def _roots(model_trace: dict, curvature: str) -> list[jax.Array]:
    """``(examples, columns)`` arrays ``R`` with ``C_i = sum_c (dR_ic / dw)^2``.

    Empirical Fisher: one column, ``sqrt(s_i) log p(y_i | x_i, w)``, observed sites in
    the same plates summed (their points are the same examples); GGN: one array per
    observed site, a column per direction of ``Lambda``."""
    groups: dict[tuple, jax.Array] = {}
    roots = []
    for site in model_trace.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        if curvature == "ggn":
            roots.append(_ggn_root(site))
            continue
        log_p = site["fn"].log_prob(site["value"])
        r = scale_and_mask(log_p, scale=_sqrt_scale(site))
        r = _examples(r, site, jnp.ndim(log_p), reduce=True)
        key = (tuple(sorted(f.name for f in site["cond_indep_stack"])), r.shape)
        groups[key] = groups[key] + r if key in groups else r
    return roots + list(groups.values())


# --------------------------------------------------------------- penalty per layer
def _squared_norms(call: _Call, x, kernel, variance, delta) -> jax.Array:
    """``sum_i sum_k sigma_k^2 g_ik^2`` for one layer call, from its output gradients."""
    shared = jnp.size(variance) == 1
    if call.op == "vdppl_dense":
        if jnp.ndim(x) == 1:
            x, delta = x[None], delta[None]
        if jnp.ndim(x) == 2:
            if shared:
                return jnp.reshape(variance, ()) * jnp.sum(delta**2 * jnp.sum(x * x, -1)[:, None])
            var = jnp.broadcast_to(variance, jnp.shape(kernel))
            return jnp.sum(delta * delta * ((x * x) @ var))
        grads = jnp.einsum("b...i,b...o->bio", x, delta)
    else:

        def per_example(xi, di):
            _, pullback = jax.vjp(
                lambda k: ops.plain_conv(xi[None], k, None, *call.options), kernel
            )
            return pullback(di[None])[0]

        grads = jax.vmap(per_example)(x, delta)
    if shared:
        return jnp.reshape(variance, ()) * jnp.sum(grads * grads)
    return jnp.sum(grads * grads * variance)


class GradientRegularizedELBO(ELBO):
    """The deterministic, gradient-regularised ELBO of Unlu & Aitchison (2020) [1].

    Use it in place of an ELBO: ``SVI(model, guide, optim, GradientRegularizedELBO())``,
    with :class:`~vdppl.numpyro.AutoVariationalDropout` (additive or multiplicative noise,
    either variance form, log-uniform priors) or with ``AutoNormal`` and Normal priors;
    ``jax.jit(svi.update)`` compiles it. The variance parameters are fitted by the
    curvature term alone and converge slowly at the means' learning rate [2]: give them a
    larger one with :func:`variance_lr`. See the module docstring for the derivation,
    the gradients used and the minibatch scaling.

    KL warm-up as for :class:`~vdppl.numpyro.LocalReparamELBO`: ``kl_weight`` set here is
    baked into a step compiled afterwards; for a schedule pass it per step,
    ``svi.update(state, x, y, kl_weight=beta)`` (a JAX scalar: one compilation), never
    to ``svi.init``.

    :param curvature: ``"empirical_fisher"`` (default, squared gradients) or ``"ggn"``.
    :param kl_weight: ``beta`` in ``[0, inf)`` scaling the KL.

    [1] Unlu, Aitchison (2020) arXiv:2011.10443.
    [2] Unlu, Aitchison (2021) arXiv:2103.00222.
    """

    def __init__(self, *, curvature: str = "empirical_fisher", kl_weight: float = 1.0) -> None:
        super().__init__(num_particles=1)
        self.curvature = check_curvature(curvature)
        self.kl_weight = kl_weight

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "kl_weight":
            value = check_kl_weight(value)
        super().__setattr__(name, value)

    def loss_with_mutable_state(
        self, rng_key, param_map: dict, model, guide, *args, **kwargs
    ) -> dict:
        """``-(data - penalty - beta * kl)`` and the updated mutable state.

        ``kwargs`` may hold ``kl_weight``, which overrides ``self.kl_weight`` for this call
        and is not passed to the model or guide."""
        beta = check_kl_weight(kwargs.pop(KL_WEIGHT_KWARG, self.kl_weight))
        terms, mutable = self._terms(rng_key, param_map, model, guide, args, kwargs)
        loss = -(terms["data"] - terms["penalty"] - beta * terms["kl"])
        return {"loss": loss, "mutable_state": mutable or None}

    def terms(self, rng_key, param_map: dict, model, guide, *args, **kwargs) -> dict:
        """``data`` (scaled log-likelihood at the mean), ``penalty`` (scaled curvature
        term, already halved) and ``kl``; the objective is ``data - penalty - beta kl``."""
        kwargs.pop(KL_WEIGHT_KWARG, None)
        return self._terms(rng_key, param_map, model, guide, args, kwargs)[0]

    def _terms(self, rng_key, param_map, model, guide, args, kwargs) -> tuple[dict, dict]:
        if rng_key is None:
            rng_key = random.key(0)  # nothing is sampled; a key only for model internals
        guide_key, model_key = random.split(rng_key)

        def run(perturbations, overrides):
            at_mean = _at_mean(overrides=overrides)
            with at_mean:
                run_guide = substitute(seed(guide, guide_key), data=param_map)
                guide_trace = trace(run_guide).get_trace(*args, **kwargs)
            mutable = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "mutable"}
            recorder = _record_layers(
                posterior_sites=at_mean.variances, perturbations=perturbations
            )
            with recorder:
                run_model = substitute(
                    replay(seed(model, model_key), guide_trace), data={**param_map, **mutable}
                )
                model_trace = trace(run_model).get_trace(*args, **kwargs)
            mutable.update(
                {n: s["value"] for n, s in model_trace.items() if s["type"] == "mutable"}
            )
            return guide_trace, model_trace, at_mean.variances, recorder, mutable

        # first run: which layers, their output shapes, and the other Gaussian sites
        guide_trace, model_trace, variances, recorder, _ = run(None, {})
        check_model_guide_match(model_trace, guide_trace)
        calls = list(recorder.calls)
        layer_sites = {c.site for c in calls}
        free = [
            n
            for n, s in model_trace.items()
            if s["type"] == "sample" and n in variances and n not in layer_sites
        ]
        means = {n: guide_trace[n]["value"] for n in free}
        zeros = [jnp.zeros(jnp.shape(o), jnp.result_type(o)) for o in recorder.outputs]

        def roots_fn(perturbations, overrides):
            guide_trace, model_trace, variances, recorder, mutable = run(perturbations, overrides)
            if [c.site for c in recorder.calls] != [c.site for c in calls]:
                raise RuntimeError(
                    "the model called its layers differently in two runs with the same "
                    "arguments; GradientRegularizedELBO needs a model whose layers do not "
                    "depend on random draws"
                )
            aux = {
                "data": _data(model_trace),
                "kl": _kl(model_trace, guide_trace),
                "inputs": recorder.inputs,
                "kernels": recorder.kernels,
                "variances": variances,
                "mutable": mutable,
            }
            return _roots(model_trace, self.curvature), aux

        roots, pullback, aux = jax.vjp(lambda p: roots_fn(p, means), zeros, has_aux=True)
        penalty = jnp.zeros(())
        for g, root in enumerate(roots):

            def column(cotangent, g=g):
                cotangents = [
                    cotangent if k == g else jnp.zeros_like(r) for k, r in enumerate(roots)
                ]
                (deltas,) = pullback(cotangents)
                return sum(
                    _squared_norms(c, x, k, aux["variances"][c.site], d)
                    for c, x, k, d in zip(calls, aux["inputs"], aux["kernels"], deltas, strict=True)
                )

            if calls:
                columns = root.shape[1]
                one_hot = jnp.broadcast_to(
                    jnp.eye(columns, dtype=root.dtype)[:, None, :], (columns, *root.shape)
                )
                penalty = penalty + jnp.sum(jax.vmap(column)(one_hot))
        if free:
            jacobians = jax.jacfwd(lambda o: roots_fn(zeros, o)[0])(means)
            for jac in jacobians:  # per root: site -> (examples, columns, *site shape)
                for name, j in jac.items():
                    var = jnp.broadcast_to(aux["variances"][name], jnp.shape(means[name]))
                    penalty = penalty + jnp.sum(j * j * var)
        terms = {"data": aux["data"], "penalty": 0.5 * penalty, "kl": aux["kl"]}
        return terms, aux["mutable"]


def _data(model_trace: dict) -> jax.Array:
    """``sum_observed scale * log p(y | x, mu)``."""
    return sum(
        (
            _log_prob_sum(s)
            for s in model_trace.values()
            if s["type"] == "sample" and s["is_observed"]
        ),
        jnp.zeros(()),
    )


def _kl(model_trace: dict, guide_trace: dict) -> jax.Array:
    """``sum_latent scale * KL(q || p)``, analytic or an error that says what to change."""
    total = jnp.zeros(())
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        guide_fn = guide_trace[name]["fn"]
        try:
            kl = kl_divergence(guide_fn, site["fn"])
        except NotImplementedError:
            raise ValueError(
                f"GradientRegularizedELBO is deterministic and needs an analytic KL at site "
                f"{name!r} ({type(guide_fn).__name__} vs {type(site['fn']).__name__}); "
                "use Normal or LogUniform priors with Normal guides, or make the site a "
                "point estimate (numpyro.param)"
            ) from None
        total = total + jnp.sum(scale_and_mask(kl, scale=guide_trace[name]["scale"]))
    return total


# ------------------------------------------------------------ variance learning rate
def is_variance_param(name: str) -> bool:
    """True for a guide's variance parameter: ``AutoVariationalDropout``'s
    ``log_sigma2[.<site>]``, ``log_alpha.<site>``, ``scale.<site>`` (no ``prefix``), or
    ``AutoNormal``'s ``<site>_auto_scale``.

    >>> [is_variance_param(n) for n in ("log_sigma2.fc1.kernel", "theta.fc1.kernel",
    ...                                 "LayerNorm_0.scale", "w_auto_scale")]
    [True, False, False, True]
    """
    return name.split(".")[0] in VARIANCE_PARAMS or name.endswith("_auto_scale")


def variance_lr(
    lr: float | optax.Schedule,
    variance_lr: float | optax.Schedule,
    *,
    optimizer: Callable[..., optax.GradientTransformation] = optax.adam,
    is_variance: Callable[[str], bool] = is_variance_param,
):
    """A NumPyro optimizer with learning rate ``variance_lr`` for the variance parameters
    and ``lr`` for the rest (``optax.multi_transform`` over the parameter names).

    The variances of the gradient-regularised objective converge slowly at the means'
    learning rate (Unlu & Aitchison [2]); a larger one for them fixes that.
    Rates may be optax schedules. Pass ``is_variance`` for a guide with a ``prefix``.

    [2] Unlu, Aitchison (2021) arXiv:2103.00222.

    >>> optim = variance_lr(1e-3, 1e-2)   # SVI(model, guide, optim, GradientRegularizedELBO())
    """

    def labels(params: dict) -> dict:
        return {k: "variance" if is_variance(k) else "mean" for k in params}

    transforms = {"mean": optimizer(lr), "variance": optimizer(variance_lr)}
    return optax_to_numpyro(optax.multi_transform(transforms, labels))
