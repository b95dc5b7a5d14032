"""``GradientRegularizedELBO``: a deterministic ELBO by a Taylor expansion (Pyro).

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
  the likelihood's Fisher in the network outputs, [3]), equal to ``-H_i`` for a model that is
  linear in ``w`` (so the expansion is then exact) and to the Fisher's expectation of the
  squared gradient over ``y ~ p(y | x, mu)``.

The objective, with ``s_i`` the scale of example ``i`` (``N / |B|`` for a minibatch
``B`` of ``N`` examples: the plate's ``subsample``, or ``poutine.scale``) and ``beta`` the
KL weight::

    ELBO ≈ sum_i s_i [log p(y_i | x_i, mu) - 1/2 sum_k sigma_k^2 C_ikk] - beta * KL(q || p)

Uniform variance (``AutoVariationalDropout(variance="uniform")``, one ``sigma^2`` for
every weight): the penalty is ``1/2 sigma^2 sum_i s_i sum_k C_ikk``, the squared
gradient norm. It draws no random numbers: two evaluations give the same value whatever
the seed.

Which gradients. A data point is an index of the observed sites' plate dims (other dims
of a site's log-density belong to the same point); ``s_i`` is applied as ``sqrt(s_i)``
to each point's log-likelihood before differentiating, so points of sites with
different scales (several observed sites, ``poutine.scale``) are weighted correctly.
Per-example gradients are exact and vectorised, with no loop over examples:

* weights of layers built by :func:`vdppl.pyro.bayesianize` (or any call of
  :func:`vdppl.pyro.ops.linear` / ``conv`` naming its weight site): a dense layer
  ``z = a @ W.T + b`` has ``g_i = delta_i a_i^T`` with ``delta_i = d log p(y_i) / d z_i``
  (one backward pass for all layers), so::

      sum_k sigma_k^2 g_ik^2 = sum_j delta_ij^2 (a_i^2 @ sigma2.T)_j
                             = sigma^2 sum_j delta_ij^2 |a_i|^2        (uniform)

  (the leading dim of a layer's input is the data point; inputs with more dims form
  ``g_i`` explicitly); a 2-d convolution forms ``g_i`` from its unfolded input patches;
* every other latent site with a Normal posterior (a latent offset, say): the
  per-example Jacobian by forward mode over the site's elements (double backward,
  batched with ``is_grads_batched``), one pass per element of the site.

``ggn`` repeats the backward pass once per column of ``Lambda``'s square root (the
output dims of a ``Normal``, the classes of a ``Categorical``).

Requirements: every latent site needs an analytic KL (log-uniform or Normal priors with
Normal guides), a weight reaches the likelihood only through the primitives (or not at
all through them), and the likelihood of example ``i`` may depend on example ``i`` only
(BatchNorm in training mode breaks this: call ``.eval()`` on it).

Cost. One step needs the forward pass at the mean (one matmul per dense layer, where
the local reparameterization needs two), one extra ``a**2 @ sigma2.T`` matmul per
dense layer (2-d convolutions: the per-example kernel gradients, ``batch x kernel``
numbers), one backward pass for ``delta`` (one per column with ``ggn``), and then a
backward pass through all of that (second order). Measured on LeNet-300-100
(784-300-100-10), batch 100, one torch thread, CPU (2 cores shared with other work, so
rough), median of 30 ``svi.step``: the MC ELBO (:class:`~vdppl.pyro.LocalReparamELBO`)
33 ms, ``empirical_fisher`` 35-37 ms, ``ggn`` 91-95 ms (10 classes, 10 backward
passes). So the squared-gradient objective costs about one MC step; it pays where the
MC ELBO's noise costs steps: no sampling noise in the gradients (larger learning
rates, no variance from weight or pre-activation draws), variances trained by
curvature rather than by noise. It does not pay with wide outputs under ``ggn`` or
with large convolution kernels and batches (per-example kernel gradients are
materialised).

[1] Unlu, Aitchison (2020) "Gradient Regularisation as Approximate Variational
    Inference", arXiv:2011.10443; Entropy 23(12):1629 (2021).
[2] Unlu, Aitchison (2021) "Variational Laplace for Bayesian neural networks",
    arXiv:2103.00222.
[3] Martens (2020) "New insights and perspectives on the natural gradient method",
    JMLR 21(146), arXiv:1412.1193.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import constraints, kl_divergence

from vdppl.options import CURVATURES, check_curvature
from vdppl.pyro.kl_weight_messenger import check_kl_weight

__all__ = ["CURVATURES", "GradientRegularizedELBO", "per_example_squared_norms", "variance_lr"]


class _Layer(NamedTuple):
    site: str
    kind: str  # "linear" or "conv"
    inputs: torch.Tensor
    outputs: torch.Tensor
    variance: torch.Tensor
    options: dict


def _mean(fn):
    """Posterior mean (median for transformed sites) of a guide distribution."""
    if isinstance(fn, torch.distributions.Independent):
        return _mean(fn.base_dist)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        value = _mean(fn.base_dist)
        for transform in fn.transforms:
            value = transform(value)
        return value
    if hasattr(fn, "v"):  # Delta
        return fn.v
    return fn.mean


def _normal_base(fn):
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Normal) else None


class _GradRegMessenger(Messenger):
    """Guide: every latent site at its mean, Normal posteriors kept by name.
    Model: ``vdppl_linear`` / ``vdppl_conv`` of those sites record inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.posteriors: dict[str, torch.distributions.Normal] = {}
        self.layers: list[_Layer] = []

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return
        base = _normal_base(msg["fn"])
        if base is not None:
            self.posteriors[msg["name"]] = base
        msg["value"] = _mean(msg["fn"]).expand(msg["fn"].shape())

    def posterior_of(self, name):
        # AutoNormal keeps the Normal of site "w" at "w_unconstrained" (identity for weights)
        return self.posteriors.get(name, self.posteriors.get(f"{name}_unconstrained"))

    def _record(self, msg, kind):
        base = self.posterior_of(msg["name"])
        if base is None:  # a point estimate: no curvature term
            return
        x, weight, *rest = msg["args"]
        msg["value"] = msg["fn"](x, weight, *rest, **msg["kwargs"])
        msg["done"] = True
        options = dict(zip(("bias", "stride", "padding", "dilation", "groups"), rest, strict=False))
        options.update(msg["kwargs"])
        self.layers.append(_Layer(msg["name"], kind, x, msg["value"], base.variance, options))

    def _pyro_vdppl_linear(self, msg):
        self._record(msg, "linear")

    def _pyro_vdppl_conv(self, msg):
        self._record(msg, "conv")


def _shared_value(variance: torch.Tensor) -> torch.Tensor | None:
    """The one value of a variance that is a single number broadcast (uniform form)."""
    if variance.numel() == 1 or all(stride == 0 for stride in variance.stride()):
        return variance[(0,) * variance.dim()]
    return None


def per_example_squared_norms(layer: _Layer, delta: torch.Tensor) -> torch.Tensor:
    """``sum_i sum_k sigma_k^2 g_ik^2`` for one layer, from its output gradients ``delta``::

    linear: sum(delta**2 * F.linear(a**2, sigma2))   (sigma^2 sum(delta**2 |a_i|^2) if shared)
    conv:   g_i = delta_i @ unfold(a_i).T;  sum(g**2 * sigma2)
    """
    shared = _shared_value(layer.variance)
    if layer.kind == "linear":
        x = layer.inputs
        if x.dim() == 1:
            x, delta = x[None], delta[None]
        if x.dim() == 2:
            if shared is not None:
                return shared * (delta * delta * (x * x).sum(-1, keepdim=True)).sum()
            return (delta * delta * F.linear(x * x, layer.variance)).sum()
        grads = torch.einsum("b...o,b...i->boi", delta, x)
    else:
        if layer.variance.dim() != 4 or layer.options.get("groups", 1) != 1:
            raise NotImplementedError(
                f"GradientRegularizedELBO supports dense layers and 2-d convolutions with "
                f"groups=1; site {layer.site!r} is neither"
            )
        kernel = layer.variance.shape[-2:]
        patches = F.unfold(
            layer.inputs,
            kernel,
            dilation=layer.options.get("dilation", 1),
            padding=layer.options.get("padding", 0),
            stride=layer.options.get("stride", 1),
        )  # (batch, in * kh * kw, positions)
        grads = torch.einsum("bop,bkp->bok", delta.flatten(2), patches)
    if shared is not None:
        return shared * (grads * grads).sum()
    return (grads * grads * layer.variance.reshape(grads.shape[1:])).sum()


# ------------------------------------------------------------ per-example "roots"
def _sqrt(scale):
    return scale.sqrt() if torch.is_tensor(scale) else math.sqrt(scale)


def _examples(r: torch.Tensor, site: dict, batch_ndim: int, reduce: bool) -> torch.Tensor:
    """``r`` (site batch dims + extra dims) as ``(examples, columns)``: plate dims of the
    site index the examples; the other dims are columns, summed when ``reduce``."""
    positions = sorted(
        {batch_ndim + f.dim for f in site["cond_indep_stack"] if f.vectorized}
        & set(range(batch_ndim))
    )
    r = torch.movedim(r, positions, list(range(len(positions))))
    r = r.reshape(math.prod(r.shape[: len(positions)]), -1)
    return r.sum(-1, keepdim=True) if reduce else r


def _ggn_root(site: dict) -> torch.Tensor:
    """``r_ic = sqrt(s_i) l_c^T f_i`` with ``Lambda = sum_c l_c l_c^T`` (``l`` detached),
    so that ``sum_c (d r_ic / d w)^2`` is the GGN of example ``i``."""
    fn = site["fn"]
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if isinstance(base, torch.distributions.Normal):
        root = base.loc * (1.0 / base.scale).detach()
        root = root.expand(base.batch_shape + base.event_shape)
    elif isinstance(base, torch.distributions.Categorical):
        # Lambda = diag(p) - p p^T = L L^T with L[:, c] = sqrt(p_c) (e_c - p)
        p = base.probs.detach()
        root = p.sqrt() * (base.logits - (p * base.logits).sum(-1, keepdim=True))
    else:
        raise NotImplementedError(
            f"curvature='ggn' supports Normal and Categorical likelihoods, not "
            f"{type(base).__name__} (site {site['name']!r}); use curvature='empirical_fisher'"
        )
    batch_ndim = len(fn.batch_shape)
    weight = scale_and_mask(root.new_ones(fn.batch_shape), _sqrt(site["scale"]), site["mask"])
    weight = weight.reshape(weight.shape + (1,) * (root.dim() - batch_ndim))
    return _examples(root * weight, site, batch_ndim, reduce=False)


def _roots(observed: list[dict], curvature: str) -> list[torch.Tensor]:
    """``(examples, columns)`` tensors ``R`` with ``C_i = sum_c (dR_ic / dw)^2``.

    Empirical Fisher: one column, ``sqrt(s_i) log p(y_i | x_i, w)``, observed sites in
    the same plates summed (their points are the same examples); GGN: one tensor per
    observed site, a column per direction of ``Lambda``."""
    if curvature == "ggn":
        return [_ggn_root(site) for site in observed]
    groups: dict[tuple, torch.Tensor] = {}
    for site in observed:
        log_p = site["fn"].log_prob(site["value"])
        r = scale_and_mask(log_p, _sqrt(site["scale"]), site["mask"])
        r = _examples(r, site, log_p.dim(), reduce=True)
        key = (tuple(sorted(f.name for f in site["cond_indep_stack"])), r.shape)
        groups[key] = groups[key] + r if key in groups else r
    return list(groups.values())


def _layer_curvature(layers: list[_Layer], roots: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i sum_k sigma_k^2 C_ikk`` over the layers' weights: one backward pass per
    column of each root gives the ``delta`` of every layer."""
    total = torch.zeros(())
    if not layers:
        return total
    outputs = [layer.outputs for layer in layers]
    for root in roots:
        for c in range(root.shape[1]):
            deltas = torch.autograd.grad(
                root[:, c].sum(), outputs, create_graph=True, allow_unused=True
            )
            for layer, delta in zip(layers, deltas, strict=True):
                if delta is not None:
                    total = total + per_example_squared_norms(layer, delta)
    return total


def _site_curvature(sites: list[tuple], roots: list[torch.Tensor]) -> torch.Tensor:
    """The same term for latent sites outside the layers, ``(value, variance)`` pairs.

    ``J_i = dR_i / dz`` by forward mode from two backward passes: with ``u`` a dummy
    cotangent, ``v = d(u . R) / dz = J^T u`` is linear in ``u``, and ``d(v . e_k) / du``
    is column ``k`` of ``J``; the basis ``e_k`` is batched (``is_grads_batched``)."""
    total = torch.zeros(())
    if not sites:
        return total
    values = [value for value, _ in sites]
    for root in roots:
        u = torch.ones_like(root, requires_grad=True)
        grads = torch.autograd.grad((u * root).sum(), values, create_graph=True, allow_unused=True)
        for (value, variance), grad in zip(sites, grads, strict=True):
            if grad is None:
                continue
            k = value.numel()
            basis = torch.eye(k, dtype=grad.dtype, device=grad.device).reshape(k, *value.shape)
            (jac,) = torch.autograd.grad(
                grad, u, basis, create_graph=True, allow_unused=True, is_grads_batched=True
            )  # (k, examples, columns)
            if jac is not None:
                variance = variance.expand(value.shape).reshape(-1)
                total = total + (jac.pow(2).sum((1, 2)) * variance).sum()
    return total


class GradientRegularizedELBO(ELBO):
    """The deterministic, gradient-regularised ELBO of Unlu & Aitchison (2020) [1].

    Use it in place of an ELBO: ``SVI(model, guide, optim, GradientRegularizedELBO())``,
    with :class:`~vdppl.pyro.AutoVariationalDropout` (additive or multiplicative noise,
    either variance form, log-uniform priors) or with ``AutoNormal`` and Normal priors.
    The variance parameters are fitted by the objective's curvature term alone; they
    converge slowly at the means' learning rate [2], so give them a larger one
    (``pyro.optim.Adam(variance_lr(lr, larger))``). See the module docstring for the
    derivation, the gradients used and the minibatch scaling.

    :param str curvature: ``"empirical_fisher"`` (default, squared gradients) or ``"ggn"``.
    :param float kl_weight: ``beta`` scaling the KL, for warm-up.

    [1] Unlu, Aitchison (2020) arXiv:2011.10443.
    [2] Unlu, Aitchison (2021) arXiv:2103.00222.
    """

    def __init__(self, *, curvature: str = "empirical_fisher", kl_weight: float = 1.0):
        super().__init__(num_particles=1)
        self.curvature = check_curvature(curvature)
        self.kl_weight = check_kl_weight(kl_weight)

    # -------------------------------------------------------------- objective
    def terms(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``data`` (scaled log-likelihood at the mean), ``penalty`` (scaled curvature
        term, already halved) and ``kl``; the objective is ``data - penalty - beta kl``."""
        recorder = _GradRegMessenger()
        with recorder:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            replayed = poutine.replay(model, trace=guide_trace)
            model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        guide_trace = poutine.util.prune_subsample_sites(guide_trace)
        model_trace = poutine.util.prune_subsample_sites(model_trace)
        layer_sites = {layer.site for layer in recorder.layers}
        data, observed, free = torch.zeros(()), [], []
        kl = torch.zeros(())
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            if site["is_observed"]:
                log_p = site["fn"].log_prob(site["value"])
                data = data + scale_and_mask(log_p, site["scale"], site["mask"]).sum()
                observed.append(site)
                continue
            kl = kl + self._kl(name, site, guide_trace, guide)
            base = recorder.posterior_of(name)
            if base is not None and name not in layer_sites:
                free.append((site["value"], base.variance))
        roots = _roots(observed, self.curvature)
        curvature = _layer_curvature(recorder.layers, roots) + _site_curvature(free, roots)
        return {"data": data, "penalty": 0.5 * curvature, "kl": kl}

    def _kl(self, name, model_site, guide_trace, guide) -> torch.Tensor:
        if isinstance(guide, AutoNormal):
            support = model_site["fn"].support
            while isinstance(support, constraints.independent):
                support = support.base_constraint
            if support is not constraints.real:
                raise ValueError(
                    f"site {name!r} has constrained support; with AutoNormal the deterministic "
                    "objective needs real-valued latent sites"
                )
            loc, scale = guide._get_loc_and_scale(name)
            fn = torch.distributions.Normal(loc, scale)
            event = model_site["fn"].event_dim
            guide_fn = fn if event == 0 else torch.distributions.Independent(fn, event)
            guide_scale, guide_mask = 1.0, None
        else:
            guide_site = guide_trace.nodes[name]
            guide_fn, guide_scale, guide_mask = (
                guide_site["fn"],
                guide_site["scale"],
                guide_site["mask"],
            )
        try:
            kl = kl_divergence(guide_fn, model_site["fn"])
        except NotImplementedError:
            raise ValueError(
                f"GradientRegularizedELBO is deterministic and needs an analytic KL at site "
                f"{name!r} ({type(guide_fn).__name__} vs {type(model_site['fn']).__name__}); "
                "use Normal or LogUniform priors with Normal guides, or make the site a "
                "point estimate (pyro.param)"
            ) from None
        return scale_and_mask(kl, guide_scale, guide_mask).sum()

    # -------------------------------------------------------- ELBO interface
    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("GradientRegularizedELBO draws no traces: it is deterministic")

    def differentiable_loss(self, model, guide, *args, **kwargs):
        terms = self.terms(model, guide, *args, **kwargs)
        return -(terms["data"] - terms["penalty"] - self.kl_weight * terms["kl"])

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.enable_grad():  # the curvature term differentiates the log-likelihood
            return float(self.differentiable_loss(model, guide, *args, **kwargs).detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


#: Names of the guides' variance parameters in Pyro's param store: ``log_sigma2`` (one
#: per site, or the uniform form's single one), ``log_alpha_param``, AutoNormal's
#: ``scales`` (and AutoVariationalDropout's, for its non-log-uniform sites).
_VARIANCE_PARAMS = ("log_sigma2", "log_alpha_param", "scales")


def variance_lr(lr: float, variance_lr: float):
    """Per-parameter Adam arguments: ``variance_lr`` for the guide's variance parameters
    (``log_sigma2``, ``log_alpha_param``, AutoNormal's ``scales``), ``lr`` for the rest.
    Pass to ``pyro.optim.Adam`` (it accepts such a callable). The variances of the
    gradient-regularised objective converge slowly at the means' rate [2].

    >>> args = variance_lr(1e-3, 1e-2)
    >>> args("AutoVariationalDropout.log_sigma2.0.weight"), args("AutoNormal.locs.0.weight")
    ({'lr': 0.01}, {'lr': 0.001})
    """

    def args(param_name: str) -> dict:
        parts = param_name.split(".")  # "<guide>.<kind>[.<site>]"
        is_variance = len(parts) > 1 and parts[1] in _VARIANCE_PARAMS
        return {"lr": variance_lr if is_variance else lr}

    return args
