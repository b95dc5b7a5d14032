"""``AutoVariationalDropout``: an autoguide for models with log-uniform priors.

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) "Variational Dropout Sparsifies Deep Neural
    Networks", ICML, arXiv:1701.05369.
[3] Unlu, Aitchison (2020) "Gradient Regularisation as Approximate Variational
    Inference", arXiv:2011.10443.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from operator import attrgetter
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import deep_setattr, helpful_support_errors
from pyro.nn import PyroModule, PyroParam
from torch.distributions import biject_to

from vdppl import kl as vdkl
from vdppl.options import (
    alpha_param_shape,
    check_guide_options,
    check_variance_form,
    kl_approximation,
    log_alpha_init_bounds,
)
from vdppl.pyro.distributions import DropoutNormal, is_log_uniform
from vdppl.pyro.init import GROUPS_KEY, init_to_module
from vdppl.pyro.local_reparam_messenger import LRT_FLAG

__all__ = ["AutoVariationalDropout"]


class _Site(NamedTuple):
    name: str
    frames: tuple
    event_dim: int
    variational_dropout: bool
    local_reparam: bool
    transform: object
    groups: int = 1


@contextmanager
def _random_state_untouched() -> Iterator[None]:
    """Run a block without consuming torch's, NumPy's or Python's global random numbers."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _grouped(shape: torch.Size, groups: int) -> tuple[int, ...]:
    """A conv weight ``(out, in/groups, *kernel)`` viewed as ``(groups, out/groups, in/groups,
    *kernel)``: entry ``[g, o, j]`` connects input channel ``g * in/groups + j``."""
    return (groups, shape[0] // groups, *shape[1:])


class AutoVariationalDropout(AutoGuide):
    """Factorized Gaussian guide with learned dropout rates for :class:`LogUniform` sites.

    Every latent site whose prior is :class:`~vdppl.pyro.LogUniform` gets
    ``q(w) = N(theta, sigma^2)`` with dropout rate ``alpha = sigma^2 / theta^2``:

    * ``noise="additive"`` (default; sparse VD [2]): parameters ``theta`` and
      ``log_sigma2`` per weight; ``log_alpha = log_sigma2 - log(theta**2 + 1e-8)`` clipped
      to ``[-8, 8]``; KL by [2]'s approximation. Alpha is unbounded, so weights can be
      pruned (:meth:`mask`). With ``variance="uniform"`` one ``log_sigma2`` is shared
      by every log-uniform site (``q(w) = N(theta, sigma^2 I)``, the "uniform" posterior
      of Unlu & Aitchison [3], where the gradient-regularised ELBO's penalty becomes
      ``sigma^2 sum_i |g_i|^2``); ``log_alpha = log_sigma2 - log(theta**2 + 1e-8)``
      still differs per weight, so weights can still be pruned.
    * ``noise="multiplicative"`` (variational dropout [1]): parameters ``theta`` and
      ``log_alpha`` (shape set by ``alpha_shape``); ``sigma^2 = alpha * theta**2``;
      ``log_alpha`` is a :class:`~pyro.nn.PyroParam` constrained to the interval
      ``(-8, max_log_alpha)``, i.e. ``log_alpha = -8 + (max_log_alpha + 8) * sigmoid(u)``
      with ``u`` unconstrained. Unlike a clamp, whose gradient is exactly 0 once the
      optimizer steps past the bound (so alpha would freeze there), the gradient only
      shrinks near the bound, and alpha can come back down when the data ask for it.
      With ``max_log_alpha <= 0`` (alpha <= 1, the default) the KL uses [1]'s cubic fit,
      otherwise [2]'s.
    * ``fixed_alpha=a``: Gaussian dropout with the rate frozen, ``p = a / (1 + a)``
      (multiplicative noise; only ``theta`` is learned; ``alpha_shape`` and
      ``max_log_alpha`` must be left at their defaults).

    ``alpha_shape`` (multiplicative noise only): ``"weight"`` (variational dropout B, one
    rate per weight), ``"unit"`` (one rate per input unit of the layer, Gaussian dropout of
    its inputs as in variational dropout A: axis 1 of an ``(out, in, *kernel)`` weight;
    for a grouped convolution, whose weight is ``(out, in/groups, *kernel)``, a parameter
    of shape ``(groups, 1, in/groups, 1, ...)`` so that each of the ``in`` input channels
    has its own rate; the noise stays independent per weight, which is what the local
    reparameterization of a factorized posterior samples), ``"layer"`` (one rate).

    Means start from each site's initial value (:func:`~vdppl.pyro.init_to_module`: the
    module's own weights, so a pretrained network can be sparsified) and
    ``log sigma^2 = init_log_sigma2`` (default -10, as [2]).

    Latent sites with any other prior are handled as :class:`~pyro.infer.autoguide.AutoNormal`
    handles them: a Normal in unconstrained space with ``init_scale``. Parameters of
    ``torch.nn`` modules (e.g. biases kept by :func:`~vdppl.pyro.bayesianize`) are not
    latent sites; SVI fits them as point estimates.

    Weight sites marked ``infer={"local_reparam": True}`` in the model are marked the same
    in the guide, so that :class:`~vdppl.pyro.LocalReparamELBO` samples their
    pre-activations instead of the weights.

    :param callable model: a Pyro model.
    :param str noise: ``"additive"`` or ``"multiplicative"``; default additive, or
        multiplicative when ``fixed_alpha`` is given.
    :param str alpha_shape: ``"weight"``, ``"unit"`` or ``"layer"``.
    :param float fixed_alpha: freeze alpha at this value (Gaussian dropout).
    :param float max_log_alpha: upper bound of a learned ``log alpha`` in multiplicative
        mode (``0.0``: alpha <= 1); ``None`` leaves it at 8. Additive noise and
        ``fixed_alpha`` have no bound to set: leave it at ``0.0`` or ``None``.
    :param float init_log_sigma2: initial ``log sigma^2``, in ``[-30, 5]``.
    :param str variance: ``"weight"`` (one ``log_sigma2`` per weight) or ``"uniform"``
        (one for the whole network, parameter ``AutoVariationalDropout.log_sigma2``);
        additive noise only.
    :param callable init_loc_fn: per-site initial values; default
        :func:`~vdppl.pyro.init_to_module`.
    :param float init_scale: initial scale of the Normal guide of non-log-uniform sites.
    :param callable create_plates: as for :class:`~pyro.infer.autoguide.AutoNormal`.
    """

    scale_constraint = constraints.softplus_positive

    def __init__(
        self,
        model,
        *,
        noise: str | None = None,
        alpha_shape: str = "weight",
        fixed_alpha: float | None = None,
        max_log_alpha: float | None = 0.0,
        init_log_sigma2: float = -10.0,
        variance: str = "weight",
        init_loc_fn=init_to_module,
        init_scale: float = 0.1,
        create_plates=None,
    ):
        noise, fixed_alpha, max_log_alpha = check_guide_options(
            noise, alpha_shape, fixed_alpha, max_log_alpha, init_log_sigma2, init_scale
        )
        self.noise = noise
        self.alpha_shape = alpha_shape
        self.fixed_alpha = None if fixed_alpha is None else float(fixed_alpha)
        self.max_log_alpha = (
            vdkl.LOG_ALPHA_CLIP[1] if max_log_alpha is None else float(max_log_alpha)
        )
        self.init_log_sigma2 = float(init_log_sigma2)
        self.variance = check_variance_form(variance, noise)
        self.init_loc_fn = init_loc_fn
        self._init_scale = init_scale
        model = InitMessenger(init_loc_fn)(model)
        super().__init__(model, create_plates=create_plates)

    # ------------------------------------------------------------------ setup
    @property
    def kl_approximation(self) -> str:
        """``"kingma"`` when alpha is bounded by 1 (multiplicative noise), else ``"molchanov"``."""
        return kl_approximation(self.noise, self.fixed_alpha, self.max_log_alpha)

    def _setup_prototype(self, *args, **kwargs):
        # The prototype run of the model draws no random numbers that training would see
        # (e.g. nn.Dropout's), so a guide set up after vdppl.pyro.load resumes exactly.
        with _random_state_untouched():
            super()._setup_prototype(*args, **kwargs)
        self.theta = PyroModule()
        if self.variance == "uniform":  # one log sigma^2 for every log-uniform site
            self.log_sigma2 = PyroParam(torch.tensor(self.init_log_sigma2), constraints.real)
        else:
            self.log_sigma2 = PyroModule()
        self.log_alpha_param = PyroModule()
        self.locs = PyroModule()
        self.scales = PyroModule()
        self._sites: list[_Site] = []
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            frames = tuple(f for f in site["cond_indep_stack"] if f.vectorized)
            if is_log_uniform(site["fn"]):
                self._setup_dropout_site(name, site, frames)
            else:
                self._setup_normal_site(name, site, frames)
        if not any(s.variational_dropout for s in self._sites):
            raise ValueError(
                "AutoVariationalDropout found no latent site with a LogUniform prior in the "
                "model. Put vdppl.pyro.LogUniform() on the weights (vdppl.pyro.bayesianize "
                "does), or use pyro.infer.autoguide.AutoNormal."
            )

    def _setup_dropout_site(self, name, site, frames):
        for frame in frames:
            if (frame.full_size or frame.size) != frame.size:
                raise ValueError(
                    f"site {name!r} has a LogUniform prior inside the subsampled plate "
                    f"{frame.name!r}; weights are global, keep them outside data plates."
                )
        theta = site["value"].detach().clone()
        if not torch.isfinite(theta).all():
            raise ValueError(f"the initial value of site {name!r} has NaN or inf entries")
        event_dim = site["fn"].event_dim
        groups = int(site["infer"].get(GROUPS_KEY, 1))
        deep_setattr(self.theta, name, PyroParam(theta, constraints.real, event_dim))
        if self.noise == "additive":
            if self.variance == "weight":  # else the one shared log_sigma2
                log_sigma2 = torch.full_like(theta, self.init_log_sigma2)
                deep_setattr(
                    self.log_sigma2, name, PyroParam(log_sigma2, constraints.real, event_dim)
                )
        elif self.fixed_alpha is None:
            per_weight = self.init_log_sigma2 - torch.log(theta.pow(2) + 1e-8)
            if self.alpha_shape == "unit" and groups > 1:
                per_weight = per_weight.reshape(_grouped(theta.shape, groups))
                shape = (groups, 1, *alpha_param_shape(tuple(theta.shape), "unit", 1)[1:])
            else:
                shape = alpha_param_shape(tuple(theta.shape), self.alpha_shape, unit_axis=1)
            pairs = zip(shape, per_weight.shape, strict=True)
            dims = [i for i, (a, b) in enumerate(pairs) if a != b]
            log_alpha = per_weight.mean(dim=dims, keepdim=True) if dims else per_weight
            log_alpha = log_alpha.clamp(*log_alpha_init_bounds(self.max_log_alpha))
            bounds = constraints.interval(vdkl.LOG_ALPHA_CLIP[0], self.max_log_alpha)
            deep_setattr(self.log_alpha_param, name, PyroParam(log_alpha, bounds))
        lrt = bool(site["infer"].get(LRT_FLAG))
        self._sites.append(_Site(name, frames, event_dim, True, lrt, None, groups))

    def _setup_normal_site(self, name, site, frames):
        transform = biject_to(site["fn"].support)
        with helpful_support_errors(site):
            init_loc = transform.inv(site["value"].detach()).detach()
        event_dim = site["fn"].event_dim + init_loc.dim() - site["value"].dim()
        for frame in frames:
            full_size = frame.full_size or frame.size
            if full_size != frame.size:
                init_loc = pyro.ops.tensor_utils.periodic_repeat(
                    init_loc, full_size, frame.dim - event_dim
                ).contiguous()
        init_scale = torch.full_like(init_loc, self._init_scale)
        deep_setattr(self.locs, name, PyroParam(init_loc, constraints.real, event_dim))
        deep_setattr(self.scales, name, PyroParam(init_scale, self.scale_constraint, event_dim))
        support = site["fn"].support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        is_identity = support is constraints.real
        self._sites.append(
            _Site(name, frames, event_dim, False, False, None if is_identity else transform)
        )

    # ---------------------------------------------------------- distributions
    def _log_alpha_and_variance(self, name):
        """``(theta, log_alpha, sigma^2)`` of a dropout site, as the noise mode defines them."""
        theta = attrgetter(name)(self.theta)
        if self.noise == "additive":
            shared = self.variance == "uniform"
            log_sigma2 = self.log_sigma2 if shared else attrgetter(name)(self.log_sigma2)
            log_alpha = vdkl.log_alpha_from_sigma2(theta, log_sigma2)
            return theta, log_alpha, torch.exp(log_sigma2)
        if self.fixed_alpha is None:
            log_alpha = attrgetter(name)(self.log_alpha_param)  # in (-8, max_log_alpha)
            if log_alpha.dim() > theta.dim():  # "unit" rates of a grouped convolution
                groups = log_alpha.shape[0]
                log_alpha = log_alpha.expand(_grouped(theta.shape, groups)).reshape(theta.shape)
        else:
            log_alpha = theta.new_full((1,) * theta.dim(), math.log(self.fixed_alpha))
        return theta, log_alpha, torch.exp(log_alpha) * theta * theta

    def get_posterior(self, name: str):
        """The guide's distribution at site ``name`` (without ``.to_event``)."""
        site = self._site(name)
        if site.variational_dropout:
            theta, log_alpha, variance = self._log_alpha_and_variance(name)
            return DropoutNormal(theta, variance, log_alpha, self.kl_approximation)
        loc = attrgetter(name)(self.locs)
        return dist.Normal(loc, attrgetter(name)(self.scales))

    def _site(self, name: str) -> _Site:
        for site in self._sites:
            if site.name == name:
                return site
        raise KeyError(f"no latent site named {name!r} in the guide")

    def forward(self, *args, **kwargs):
        """Sample every latent site (deferring LRT weight sites under ``local_reparam``).

        :return: a dict from site name to value.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for site in self._sites:
            with ExitStack() as stack:
                for frame in site.frames:
                    stack.enter_context(plates[frame.name])
                fn = self.get_posterior(site.name)
                if site.variational_dropout:
                    infer = {LRT_FLAG: True} if site.local_reparam else {}
                    fn = fn.to_event(site.event_dim)
                else:
                    fn = fn.to_event(site.event_dim)
                    if site.transform is not None:
                        fn = dist.TransformedDistribution(fn, [site.transform.with_cache()])
                    infer = {}
                result[site.name] = pyro.sample(site.name, fn, infer=infer)
        return result

    # -------------------------------------------------------------- summaries
    def _require_setup(self):
        if self.prototype_trace is None:
            raise RuntimeError(
                "the guide has no parameters yet: call it once with the model's arguments "
                "(svi.step(...) does) before asking for its summaries."
            )

    def _summary_context(self):
        """Read parameters from Pyro's param store, as a call of the guide does.

        Outside a call a PyroModule reads its own copy of each parameter, which is stale
        once the store is replaced (``vdppl.pyro.load``, ``pyro.get_param_store()
        .set_state``); summaries must describe the parameters that training would use.
        """
        self._require_setup()
        return self._pyro_context

    @property
    def dropout_sites(self) -> list[str]:
        """Names of the sites with a log-uniform prior, in model order."""
        self._require_setup()
        return [s.name for s in self._sites if s.variational_dropout]

    @property
    def groups(self) -> dict[str, int]:
        """``groups`` of each dropout site's layer (a grouped convolution's; else 1)."""
        self._require_setup()
        return {s.name: s.groups for s in self._sites if s.variational_dropout}

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior median of each latent site (``theta`` for dropout sites)."""
        out = {}
        with self._summary_context():
            for site in self._sites:
                if site.variational_dropout:
                    out[site.name] = attrgetter(site.name)(self.theta).detach().clone()
                else:
                    loc = attrgetter(site.name)(self.locs).detach()
                    out[site.name] = loc.clone() if site.transform is None else site.transform(loc)
        return out

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior quantiles of each latent site, stacked along a new leading dim."""
        out = {}
        with self._summary_context():
            for site in self._sites:
                fn = self.get_posterior(site.name)
                shape = (-1,) + (1,) * fn.loc.dim()
                q = torch.as_tensor(quantiles, dtype=fn.loc.dtype).reshape(shape)
                values = dist.Normal(fn.loc, fn.scale).icdf(q)
                out[site.name] = values if site.transform is None else site.transform(values)
        return out

    @torch.no_grad()
    def log_alpha(self) -> dict[str, torch.Tensor]:
        """``log alpha`` of every dropout site, broadcast to the weight's shape."""
        out = {}
        with self._summary_context():
            for name in self.dropout_sites:
                theta, log_alpha, _ = self._log_alpha_and_variance(name)
                out[name] = log_alpha.detach().expand(theta.shape).clone()
        return out

    @torch.no_grad()
    def mask(self, threshold: float = vdkl.DEFAULT_THRESHOLD) -> dict[str, torch.Tensor]:
        """Boolean masks of the kept weights, ``log_alpha < threshold`` [2]."""
        threshold = vdkl.check_threshold(threshold)
        return {k: vdkl.keep_mask(v, threshold) for k, v in self.log_alpha().items()}

    @torch.no_grad()
    def pruned_median(self, threshold: float = vdkl.DEFAULT_THRESHOLD) -> dict[str, torch.Tensor]:
        """:meth:`median` with pruned weights set to zero: the sparse deterministic network."""
        values = self.median()
        for name, keep in self.mask(threshold).items():
            values[name] = values[name] * keep
        return values
