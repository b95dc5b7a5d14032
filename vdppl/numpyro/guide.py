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
import operator
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro import handlers
from numpyro.distributions import biject_to, constraints
from numpyro.distributions.transforms import Transform
from numpyro.distributions.util import periodic_repeat
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.util import helpful_support_errors

from vdppl import kl as vdkl
from vdppl.numpyro._checks import check_finite, is_concrete
from vdppl.numpyro.distributions import DropoutNormal, is_log_uniform
from vdppl.numpyro.init import init_to_module
from vdppl.numpyro.local_reparam_messenger import GUIDE_FLAG, LRT_FLAG
from vdppl.numpyro.nn import GROUPS_KEY
from vdppl.options import (
    alpha_param_shape,
    check_guide_options,
    check_variance_form,
    kl_approximation,
)

__all__ = ["AutoVariationalDropout"]


def _check_not_traced(value, site: str | None = None) -> None:
    """Refuse to set the guide up from traced values (they would outlive their trace)."""
    if is_concrete(value):
        return
    what = f"the initial value of site {site!r} is" if site else "its PRNG key is"
    raise RuntimeError(
        f"AutoVariationalDropout is being set up under a JAX trace ({what} a tracer): "
        "the guide keeps its initial values, and traced ones would leak out of jax.jit. "
        "Call svi.init(...) outside jax.jit / jax.vmap (jit svi.update instead), or call "
        "the guide once eagerly before tracing."
    )


class _Site(NamedTuple):
    name: str
    frames: tuple
    event_dim: int
    variational_dropout: bool
    local_reparam: bool
    transform: Transform | None  # unconstrained -> support, None for the identity
    init: Any  # theta, or the unconstrained loc
    groups: int = 1  # a grouped convolution's feature_group_count


def _grouped(shape: tuple[int, ...], groups: int) -> tuple[int, ...]:
    """A Flax conv kernel ``(*kernel, in/groups, out)`` viewed as ``(*kernel, in/groups,
    groups, out/groups)``: entry ``[..., j, g, o]`` connects input channel
    ``g * in/groups + j`` to output channel ``g * out/groups + o``."""
    return (*shape[:-1], groups, shape[-1] // groups)


def _check_groups(name: str, shape: tuple[int, ...], groups: Any) -> int:
    """The group count a site's ``infer`` gives, checked against its kernel's shape."""
    try:
        groups = operator.index(groups)
    except TypeError:
        groups = 0
    if groups < 1:
        raise ValueError(f"site {name!r}: {GROUPS_KEY} must be an int >= 1")
    if groups > 1 and (len(shape) < 3 or shape[-1] % groups):
        raise ValueError(
            f"site {name!r} has {GROUPS_KEY}={groups}, which needs a convolution kernel "
            f"(*kernel, in / groups, out) whose out-features divide by the groups; got shape "
            f"{shape}"
        )
    return groups


class AutoVariationalDropout(AutoGuide):
    """Factorized Gaussian guide with learned dropout rates for :class:`LogUniform` sites.

    Every latent site whose prior is :class:`~vdppl.numpyro.LogUniform` gets
    ``q(w) = N(theta, sigma^2)`` with dropout rate ``alpha = sigma^2 / theta^2``:

    * ``noise="additive"`` (default; sparse VD [2]): parameters ``theta`` and
      ``log_sigma2`` per weight; ``log_alpha = log_sigma2 - log(theta**2 + 1e-8)`` clipped
      to ``[-8, 8]``; KL by [2]'s approximation. Alpha is unbounded, so weights can be
      pruned (:meth:`mask`).
    * ``noise="multiplicative"`` (variational dropout [1]): parameters ``theta`` and
      ``log_alpha`` (shape set by ``alpha_shape``); ``sigma^2 = alpha * theta**2``;
      ``log_alpha`` clipped to ``[-8, max_log_alpha]``. With ``max_log_alpha <= 0``
      (alpha <= 1, the default) the KL uses [1]'s cubic fit, otherwise [2]'s.
    * ``fixed_alpha=a``: Gaussian dropout with the rate frozen, ``p = a / (1 + a)``
      (multiplicative noise; only ``theta`` is learned).

    ``alpha_shape`` (multiplicative noise only): ``"weight"`` (variational dropout B, one
    rate per weight), ``"unit"`` (one rate per input unit: axis -2 of a Flax kernel
    ``(*kernel, in, out)``, Gaussian dropout of the layer's inputs as in variational
    dropout A, with noise independent per weight as the local reparameterization of a
    factorized posterior samples it; for a grouped convolution, whose kernel is
    ``(*kernel, in/groups, out)``, a parameter of shape ``(1, ..., 1, in/groups, groups,
    1)`` broadcast over the kernel viewed as ``(*kernel, in/groups, groups, out/groups)``,
    so that each of the ``in`` input channels has its own rate: input channel
    ``g * in/groups + j`` has entry ``[..., j, g, 0]``), ``"layer"`` (one rate). The
    group count comes from the kernel site's ``infer["vdppl_groups"]``
    (:data:`vdppl.numpyro.nn.GROUPS_KEY`), which :func:`vdppl.numpyro.nn.conv` and
    :func:`~vdppl.numpyro.bayesianize` set; a hand-written grouped site sets it too.

    Means start from each site's initial value (:func:`~vdppl.numpyro.init_to_module`:
    the layer's own initial or pretrained kernel) and ``log sigma^2 = init_log_sigma2``
    (default -10, as [2]). Latent sites with any other prior are handled as
    :class:`~numpyro.infer.autoguide.AutoNormal` handles them: a Normal in unconstrained
    space with ``init_scale``. ``numpyro.param`` sites of the model (biases of
    :mod:`vdppl.numpyro.nn` layers) are not latent; SVI fits them as point estimates.

    Parameter names (keys of ``svi.get_params(state)``), ``<site>`` the sample site:
    ``theta.<site>`` and ``log_sigma2.<site>`` (additive; one ``log_sigma2`` for all
    sites with ``variance="uniform"``), ``theta.<site>`` and
    ``log_alpha.<site>`` (multiplicative; none for ``log_alpha`` with ``fixed_alpha``),
    ``loc.<site>`` and ``scale.<site>`` (other sites); each prefixed by ``"<prefix>."``
    when ``prefix`` is given.

    Weight sites marked ``infer={"local_reparam": True}`` in the model are marked
    ``{"local_reparam": True, "vdppl_lrt_guide": True}`` in the guide, so that
    :class:`~vdppl.numpyro.LocalReparamELBO` (or ``local_reparam`` around model and
    guide) samples their pre-activations instead of the weights. That holds for the
    dropout sites and for marked sites with any other prior whose guide is a Normal on
    the real line (a Gaussian prior, say).

    The guide sets itself up on its first call (``svi.init`` makes it), eagerly: initial
    values are checked for NaN there and kept as concrete arrays. Call ``svi.init``
    outside ``jax.jit`` / ``jax.vmap`` (jit ``svi.update``); set-up under a trace raises a
    ``RuntimeError`` instead of keeping traced values.

    :param model: a NumPyro model.
    :param prefix: prefix of the parameter names (default none).
    :param noise: ``"additive"`` or ``"multiplicative"``; default additive, or
        multiplicative when ``fixed_alpha`` is given.
    :param alpha_shape: ``"weight"``, ``"unit"`` or ``"layer"``.
    :param fixed_alpha: freeze alpha at this value (Gaussian dropout).
    :param max_log_alpha: upper clip of ``log alpha`` in multiplicative mode
        (``0.0``: alpha <= 1); ``None`` leaves it at 8.
    :param init_log_sigma2: initial ``log sigma^2``, in ``[-30, 5]``.
    :param variance: ``"weight"`` (one ``log_sigma2`` per weight) or ``"uniform"`` (one
        shared by every log-uniform site, ``q(w) = N(theta, sigma^2 I)``: the "uniform"
        posterior of [3], where the gradient-regularised ELBO's penalty becomes
        ``sigma^2 sum_i |g_i|^2``; ``log_alpha`` still differs per weight, so weights can
        still be pruned); additive noise only.
    :param init_loc_fn: per-site initial values; default
        :func:`~vdppl.numpyro.init_to_module`.
    :param init_scale: initial scale of the Normal guide of non-log-uniform sites.
    :param create_plates: as for :class:`~numpyro.infer.autoguide.AutoNormal`.
    """

    scale_constraint = constraints.softplus_positive

    def __init__(
        self,
        model: Callable,
        *,
        prefix: str = "",
        noise: str | None = None,
        alpha_shape: str = "weight",
        fixed_alpha: float | None = None,
        max_log_alpha: float | None = 0.0,
        init_log_sigma2: float = -10.0,
        variance: str = "weight",
        init_loc_fn: Callable = init_to_module,
        init_scale: float = 0.1,
        create_plates: Callable | None = None,
    ):
        noise, fixed_alpha, max_log_alpha = check_guide_options(
            noise, alpha_shape, fixed_alpha, max_log_alpha, init_log_sigma2, init_scale
        )
        self.noise = noise
        self.alpha_shape = alpha_shape
        self.fixed_alpha = fixed_alpha
        self.max_log_alpha = max_log_alpha
        self.init_log_sigma2 = float(init_log_sigma2)
        self.variance = check_variance_form(variance, noise)
        self._init_scale = init_scale
        self._sites: list[_Site] = []
        self._specs: dict[str, dict] = {}
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn, create_plates=create_plates)

    # ------------------------------------------------------------------ setup
    @property
    def kl_approximation(self) -> str:
        """``"kingma"`` when alpha is bounded by 1 (multiplicative noise), else ``"molchanov"``."""
        return kl_approximation(self.noise, self.fixed_alpha, self.max_log_alpha)

    def _param_name(self, kind: str, site: str) -> str:
        if kind == "log_sigma2" and self.variance == "uniform":  # one for every site
            return f"{self.prefix}.{kind}" if self.prefix else kind
        return f"{self.prefix}.{kind}.{site}" if self.prefix else f"{kind}.{site}"

    def _setup_prototype(self, *args, **kwargs) -> None:
        rng_key = numpyro.prng_key()
        if rng_key is None:
            raise RuntimeError(
                "AutoVariationalDropout sets itself up on its first call and needs a PRNG key "
                "for that: call it under numpyro.handlers.seed (svi.init does)."
            )
        _check_not_traced(rng_key)
        with handlers.block():
            run = handlers.substitute(
                handlers.seed(self.model, rng_key), substitute_fn=self._prototype_value
            )
            prototype = handlers.trace(run).get_trace(*args, **kwargs)
        self._prototype_frames = {}
        self._prototype_frame_full_sizes = {}
        for name, site in prototype.items():
            if site["type"] == "plate":
                self._prototype_frame_full_sizes[name] = site["args"][0]
            elif site["type"] == "sample" and not site["is_observed"]:
                for frame in site["cond_indep_stack"]:
                    self._prototype_frames.setdefault(frame.name, frame)
        sites = []
        for name, site in prototype.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"AutoVariationalDropout cannot handle the discrete latent site {name!r}; "
                    "enumerate it out (TraceEnum_ELBO) or observe it."
                )
            frames = tuple(site["cond_indep_stack"])
            if is_log_uniform(site["fn"]):
                sites.append(self._dropout_site(name, site, frames))
            else:
                sites.append(self._normal_site(name, site, frames))
        for site in sites:
            _check_not_traced(site.init, site.name)
        if not any(s.variational_dropout for s in sites):
            raise ValueError(
                "AutoVariationalDropout found no latent site with a LogUniform prior in the "
                "model. Put vdppl.numpyro.LogUniform() on the weights (vdppl.numpyro.nn and "
                "bayesianize do), or use numpyro.infer.autoguide.AutoNormal."
            )
        # set only once everything checked out, so a failed set-up can be retried
        self._sites = sites
        self._specs = {site.name: self._param_specs(site) for site in sites}
        self.prototype_trace = prototype

    def _prototype_value(self, msg: dict):
        """Initial values for the prototype run; a subsampled plate gets indices
        ``0..size-1`` instead of a random draw (only its size matters here)."""
        if msg["type"] == "plate":
            size, subsample_size = msg["args"]
            if subsample_size is not None and subsample_size != size:
                return jnp.arange(subsample_size)
            return None
        return self.init_loc_fn(msg)

    def _dropout_site(self, name: str, site: dict, frames: tuple) -> _Site:
        for frame in frames:
            if self._prototype_frame_full_sizes.get(frame.name, frame.size) != frame.size:
                raise ValueError(
                    f"site {name!r} has a LogUniform prior inside the subsampled plate "
                    f"{frame.name!r}; weights are global, keep them outside data plates."
                )
        theta = jnp.asarray(site["value"])
        check_finite(theta, f"the initial value of site {name!r}")
        groups = _check_groups(name, jnp.shape(theta), site["infer"].get(GROUPS_KEY, 1))
        lrt = bool(site["infer"].get(LRT_FLAG))
        return _Site(name, frames, site["fn"].event_dim, True, lrt, None, theta, groups)

    def _normal_site(self, name: str, site: dict, frames: tuple) -> _Site:
        with helpful_support_errors(site):
            transform = biject_to(site["fn"].support)
        init = transform.inv(site["value"])
        event_dim = site["fn"].event_dim + jnp.ndim(init) - jnp.ndim(site["value"])
        for frame in frames:
            full_size = self._prototype_frame_full_sizes[frame.name]
            if full_size != frame.size:
                init = periodic_repeat(init, full_size, frame.dim - event_dim)
        support = site["fn"].support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        identity = support is constraints.real
        # a Normal on the weight itself: local reparameterization applies as for dropout sites
        lrt = identity and bool(site["infer"].get(LRT_FLAG))
        return _Site(name, frames, event_dim, False, lrt, None if identity else transform, init)

    # ------------------------------------------------------------- parameters
    def _param_specs(self, site: _Site) -> dict[str, tuple]:
        """``kind -> (initial value, constraint)`` of one site's parameters (at set-up)."""
        if not site.variational_dropout:
            scale = jnp.full(jnp.shape(site.init), self._init_scale)
            return {
                "loc": (site.init, constraints.real),
                "scale": (scale, self.scale_constraint),
            }
        theta = site.init
        specs = {"theta": (theta, constraints.real)}
        if self.noise == "additive":
            shape = () if self.variance == "uniform" else jnp.shape(theta)
            log_sigma2 = jnp.full(shape, self.init_log_sigma2, jnp.result_type(theta))
            specs["log_sigma2"] = (log_sigma2, constraints.real)
        elif self.fixed_alpha is None:
            per_weight = self.init_log_sigma2 - jnp.log(theta * theta + 1e-8)
            if self._grouped_units(site):  # one rate per input channel of every group
                per_weight = jnp.reshape(per_weight, _grouped(jnp.shape(theta), site.groups))
                shape = (*(1,) * (jnp.ndim(theta) - 2), jnp.shape(theta)[-2], site.groups, 1)
            else:
                shape = alpha_param_shape(jnp.shape(theta), self.alpha_shape, unit_axis=-2)
            axes = tuple(
                i
                for i, (a, b) in enumerate(zip(shape, jnp.shape(per_weight), strict=True))
                if a != b
            )
            log_alpha = jnp.mean(per_weight, axis=axes, keepdims=True) if axes else per_weight
            log_alpha = jnp.clip(log_alpha, vdkl.LOG_ALPHA_CLIP[0], self.max_log_alpha)
            specs["log_alpha"] = (log_alpha, constraints.real)
        return specs

    def _grouped_units(self, site: _Site) -> bool:
        """True if ``site`` has one learned rate per input channel of a grouped conv."""
        return (
            site.groups > 1
            and self.alpha_shape == "unit"
            and self.noise == "multiplicative"
            and self.fixed_alpha is None
        )

    def _values(self, site: _Site, params: dict) -> dict:
        try:
            return {k: params[self._param_name(k, site.name)] for k in self._specs[site.name]}
        except KeyError as err:
            raise KeyError(
                f"params has no {err.args[0]!r}; pass the parameters of this guide "
                "(svi.get_params(state)) after it has been set up."
            ) from None

    def _posterior(self, site: _Site, values: dict) -> dist.Normal:
        """The guide's distribution at ``site`` (without ``.to_event``) from its values."""
        if not site.variational_dropout:
            return dist.Normal(values["loc"], values["scale"])
        theta = values["theta"]
        if self.noise == "additive":
            log_alpha = vdkl.log_alpha_from_sigma2(theta, values["log_sigma2"])
            variance = jnp.exp(values["log_sigma2"])
        else:
            if self.fixed_alpha is None:
                log_alpha = jnp.clip(
                    values["log_alpha"], vdkl.LOG_ALPHA_CLIP[0], self.max_log_alpha
                )
                if self._grouped_units(site):  # per input channel -> per weight
                    grouped = _grouped(jnp.shape(theta), site.groups)
                    log_alpha = jnp.reshape(jnp.broadcast_to(log_alpha, grouped), jnp.shape(theta))
            else:
                log_alpha = jnp.full((1,) * jnp.ndim(theta), math.log(self.fixed_alpha))
            variance = jnp.exp(log_alpha) * theta * theta
        # valid by construction (variance = exp(.) or exp(.) * theta^2 >= 0): no eager checks
        return DropoutNormal(theta, variance, log_alpha, self.kl_approximation, validate_args=False)

    def get_posterior(self, params: dict, name: str) -> dist.Normal:
        """The guide's distribution at site ``name`` (without ``.to_event``)."""
        site = self._site(name)
        return self._posterior(site, self._values(site, params))

    def _site(self, name: str) -> _Site:
        self._require_setup()
        for site in self._sites:
            if site.name == name:
                return site
        raise KeyError(f"no latent site named {name!r} in the guide")

    def __call__(self, *args, **kwargs) -> dict:
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
                values = {
                    kind: numpyro.param(
                        self._param_name(kind, site.name),
                        init,
                        constraint=constraint,
                        event_dim=jnp.ndim(init) if site.variational_dropout else site.event_dim,
                    )
                    for kind, (init, constraint) in self._specs[site.name].items()
                }
                fn = self._posterior(site, values).to_event(site.event_dim)
                if site.transform is not None:
                    fn = dist.TransformedDistribution(fn, site.transform)
                infer = {LRT_FLAG: True, GUIDE_FLAG: True} if site.local_reparam else {}
                result[site.name] = numpyro.sample(site.name, fn, infer=infer)
        return result

    # -------------------------------------------------------------- summaries
    def _require_setup(self) -> None:
        if self.prototype_trace is None:
            raise RuntimeError(
                "the guide has no parameters yet: call it once with the model's arguments "
                "(svi.init(...) does) before asking for its summaries."
            )

    @property
    def dropout_sites(self) -> list[str]:
        """Names of the sites with a log-uniform prior, in model order."""
        self._require_setup()
        return [s.name for s in self._sites if s.variational_dropout]

    @property
    def groups(self) -> dict[str, int]:
        """``feature_group_count`` of each dropout site's layer (a grouped conv's; else 1)."""
        self._require_setup()
        return {s.name: s.groups for s in self._sites if s.variational_dropout}

    def _constrain(self, site: _Site, value):
        return value if site.transform is None else site.transform(value)

    def sample_posterior(
        self, rng_key, params: dict, *args, sample_shape: tuple[int, ...] = (), **kwargs
    ) -> dict:
        """Draws of every latent site, each of shape ``sample_shape + site shape``.

        Weights are sampled from ``N(theta, sigma^2)`` (no local reparameterization: these
        are weight draws). When the model's arguments are given, the model's
        ``numpyro.deterministic`` sites are returned too, computed from each draw with the
        model's fitted ``numpyro.param`` values, as ``AutoNormal`` does.
        """
        self._require_setup()
        sample_shape = tuple(sample_shape)
        keys = random.split(rng_key, len(self._sites))
        out = {}
        for key, site in zip(keys, self._sites, strict=True):
            fn = self.get_posterior(params, site.name)
            eps = random.normal(key, sample_shape + jnp.shape(fn.loc), jnp.result_type(fn.loc))
            out[site.name] = self._constrain(site, fn.loc + fn.scale * eps)
        if args or kwargs:
            out.update(self._deterministic_sites(out, params, sample_shape, args, kwargs))
        return out

    def _deterministic_sites(self, latent, params, sample_shape, args, kwargs) -> dict:
        def run(values):
            model = handlers.substitute(handlers.substitute(self.model, data=params), data=values)
            tr = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
            return {n: s["value"] for n, s in tr.items() if s["type"] == "deterministic"}

        if not sample_shape:
            return run(latent)
        flat = {
            k: jnp.reshape(v, (-1, *jnp.shape(v)[len(sample_shape) :])) for k, v in latent.items()
        }
        values = jax.vmap(run)(flat)
        return {k: jnp.reshape(v, sample_shape + jnp.shape(v)[1:]) for k, v in values.items()}

    def median(self, params: dict) -> dict:
        """Posterior median of each latent site (``theta`` for dropout sites)."""
        self._require_setup()
        out = {}
        for site in self._sites:
            values = self._values(site, params)
            loc = values["theta"] if site.variational_dropout else values["loc"]
            out[site.name] = self._constrain(site, loc)
        return out

    def quantiles(self, params: dict, quantiles: Sequence[float]) -> dict:
        """Posterior quantiles of each latent site, stacked along a new leading dim."""
        self._require_setup()
        out = {}
        for site in self._sites:
            fn = self.get_posterior(params, site.name)
            q = jnp.reshape(jnp.asarray(quantiles), (-1,) + (1,) * jnp.ndim(fn.loc))
            values = fn.loc + fn.scale * jax.scipy.special.ndtri(q)
            out[site.name] = self._constrain(site, values)
        return out

    def log_alpha(self, params: dict) -> dict:
        """``log alpha`` of every dropout site, broadcast to the weight's shape."""
        out = {}
        for name in self.dropout_sites:
            fn = self.get_posterior(params, name)
            out[name] = jnp.broadcast_to(fn.log_alpha, jnp.shape(fn.loc))
        return out

    def mask(self, params: dict, threshold: float = vdkl.DEFAULT_THRESHOLD) -> dict:
        """Boolean masks of the kept weights, ``log_alpha < threshold`` [2]."""
        threshold = vdkl.check_threshold(threshold)
        return {k: vdkl.keep_mask(v, threshold) for k, v in self.log_alpha(params).items()}

    def pruned_median(self, params: dict, threshold: float = vdkl.DEFAULT_THRESHOLD) -> dict:
        """:meth:`median` with pruned weights set to zero: the sparse deterministic network."""
        values = self.median(params)
        for name, keep in self.mask(params, threshold).items():
            values[name] = jnp.where(keep, values[name], 0.0)
        return values
