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
  the likelihood's Fisher in the network outputs), equal to ``-H_i`` for a model that is
  linear in ``w`` (so the expansion is then exact) and to the Fisher's expectation of the
  squared gradient over ``y ~ p(y | x, mu)``.

The objective, for a minibatch ``B`` of ``N`` examples and ``beta`` the KL weight::

    ELBO ≈ N/|B| sum_{i in B} [log p(y_i | x_i, mu) - 1/2 sum_k sigma_k^2 C_ikk]
           - beta * KL(q || p)

It draws no random numbers: two evaluations give the same value whatever the seed.

Which gradients: per-example gradients of ``log p(y_i | x_i, mu)`` (unscaled by the
plate) with respect to the weights of every layer built by :func:`vdppl.pyro.bayesianize`
(or any call of :func:`vdppl.pyro.ops.linear` / ``conv`` naming its weight site). They
are exact and vectorised, with no loop over examples: a dense layer ``z = a @ W.T + b``
has ``g_i = delta_i a_i^T`` with ``delta_i = d log p(y_i) / d z_i``, so::

    sum_k sigma_k^2 g_ik^2 = sum_j delta_ij^2 (a_i^2 @ sigma2.T)_j

(one backward pass for all ``delta``); a 2-d convolution forms ``g_i`` from its
unfolded input patches. ``ggn`` needs one backward pass per network output (the rows of
``Lambda``'s square root), for ``Normal`` and ``Categorical`` likelihoods. Other latent
sites (e.g. a noise scale) enter at their posterior mean without a curvature term.

Requirements: every latent site needs an analytic KL (log-uniform or Normal priors with
Normal guides), and the likelihood of example ``i`` may depend on example ``i`` only
(BatchNorm in training mode breaks this: call ``.eval()`` on it).

[1] Unlu, Aitchison (2020) "Gradient Regularisation as Approximate Variational
    Inference", arXiv:2011.10443; Entropy 23(12):1629 (2021).
"""

from __future__ import annotations

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

from vdppl.pyro.kl_weight_messenger import check_kl_weight

__all__ = ["GradientRegularizedELBO", "per_example_squared_norms", "variance_lr"]

CURVATURES = ("empirical_fisher", "ggn")


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

    def _posterior_of(self, name):
        # AutoNormal keeps the Normal of site "w" at "w_unconstrained" (identity for weights)
        return self.posteriors.get(name, self.posteriors.get(f"{name}_unconstrained"))

    def _record(self, msg, kind):
        base = self._posterior_of(msg["name"])
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


def per_example_squared_norms(layer: _Layer, delta: torch.Tensor) -> torch.Tensor:
    """``sum_i sum_k sigma_k^2 g_ik^2`` for one layer, from its output gradients ``delta``."""
    if layer.kind == "linear":
        return (delta * delta * F.linear(layer.inputs * layer.inputs, layer.variance)).sum()
    if layer.variance.dim() != 4 or layer.options.get("groups", 1) != 1:
        raise NotImplementedError(
            f"GradientRegularizedELBO supports dense layers and 2-d convolutions with groups=1; "
            f"site {layer.site!r} is neither"
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
    return (grads * grads * layer.variance.flatten(1)).sum()


class GradientRegularizedELBO(ELBO):
    """The deterministic, gradient-regularised ELBO of Unlu & Aitchison (2020).

    Use it in place of an ELBO: ``SVI(model, guide, optim, GradientRegularizedELBO())``,
    with :class:`~vdppl.pyro.AutoVariationalDropout` (additive or multiplicative noise,
    log-uniform priors) or with ``AutoNormal`` and Normal priors. The variance parameters
    are fitted by the objective's curvature term; they converge slowly at the means'
    learning rate, so give them a larger one (``pyro.optim.Adam(per_param_args)``, see
    :func:`variance_lr`). See the module docstring for the derivation.

    :param str curvature: ``"empirical_fisher"`` (default, squared gradients) or ``"ggn"``.
    :param float kl_weight: ``beta`` scaling the KL, for warm-up.
    """

    def __init__(self, *, curvature: str = "empirical_fisher", kl_weight: float = 1.0):
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
        super().__init__(num_particles=1)
        self.curvature = curvature
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
        data, unscaled, observed, scale = 0.0, 0.0, [], 1.0
        kl = torch.zeros(())
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                log_p = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
                data = data + scale_and_mask(log_p, scale=site["scale"]).sum()
                unscaled = unscaled + log_p.sum()
                observed.append(site)
                scale = site["scale"]
            elif not site["infer"].get("_deterministic"):
                kl = kl + self._kl(name, site, guide_trace, guide)
        penalty = 0.5 * scale * self._curvature(recorder.layers, unscaled, observed)
        return {"data": data, "penalty": penalty, "kl": kl}

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

    def _curvature(self, layers: list[_Layer], unscaled, observed) -> torch.Tensor:
        if not layers:
            return torch.zeros(())
        outputs = [layer.outputs for layer in layers]
        if self.curvature == "empirical_fisher":
            deltas = torch.autograd.grad(unscaled, outputs, create_graph=True)
            return sum(
                per_example_squared_norms(lay, d) for lay, d in zip(layers, deltas, strict=True)
            )
        total = torch.zeros(())
        for direction in _ggn_directions(observed):
            deltas = torch.autograd.grad(direction, outputs, create_graph=True, allow_unused=True)
            for layer, delta in zip(layers, deltas, strict=True):
                if delta is not None:
                    total = total + per_example_squared_norms(layer, delta)
        return total

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


def _ggn_directions(observed):
    """Scalars whose gradients are ``J^T l_c``, for ``Lambda = sum_c l_c l_c^T``."""
    for site in observed:
        fn = site["fn"]
        while isinstance(fn, torch.distributions.Independent):
            fn = fn.base_dist
        if isinstance(fn, torch.distributions.Normal):
            # Lambda = 1 / sigma^2 per output: one direction per output dim
            weight = (1.0 / fn.scale).detach().expand(fn.loc.shape)
            flat = (fn.loc * weight).reshape(fn.loc.shape[0], -1)
            for c in range(flat.shape[1]):
                yield flat[:, c].sum()
        elif isinstance(fn, torch.distributions.Categorical):
            # Lambda = diag(p) - p p^T = L L^T with L[:, c] = sqrt(p_c) (e_c - p)
            p = fn.probs.detach()
            for c in range(p.shape[-1]):
                direction = -p * p[..., c : c + 1].sqrt()
                direction[..., c] += p[..., c].sqrt()
                yield (fn.logits * direction).sum()
        else:
            raise NotImplementedError(
                f"curvature='ggn' supports Normal and Categorical likelihoods, not "
                f"{type(fn).__name__}; use curvature='empirical_fisher'"
            )


def variance_lr(lr: float, variance_lr: float):
    """Per-parameter Adam arguments: ``variance_lr`` for the guide's variance parameters
    (``log_sigma2``, ``log_alpha_param``, AutoNormal's ``scales``), ``lr`` for the rest.
    Pass to ``pyro.optim.Adam`` (it accepts such a callable)."""

    def args(param_name: str) -> dict:
        is_variance = any(
            k in param_name for k in (".log_sigma2.", ".log_alpha_param.", ".scales.")
        )
        return {"lr": variance_lr if is_variance else lr}

    return args
