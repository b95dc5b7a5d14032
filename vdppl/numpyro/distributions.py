"""The log-uniform prior and the variational dropout posterior, as NumPyro distributions.

``LogUniform`` is the improper scale-invariant prior ``p(w) ∝ 1/|w|`` of [1] and [2].
``DropoutNormal`` is the factorized Gaussian ``N(theta, sigma^2)`` that
:class:`~vdppl.numpyro.AutoVariationalDropout` emits; it also carries its dropout rate
``log_alpha`` and the name of the KL approximation that fits its noise mode.

Both KL pairs are registered with :func:`numpyro.distributions.kl.kl_divergence` (a
``multipledispatch`` function; NumPyro has no ``register_kl``), so
:class:`~numpyro.infer.TraceMeanField_ELBO` uses the analytic approximation, including
for the ``.to_event(n)`` forms that guides and models use:

* ``kl_divergence(DropoutNormal, LogUniform)``: the distribution's own ``log_alpha`` and
  approximation;
* ``kl_divergence(Normal, LogUniform)``: [2]'s approximation with
  ``log_alpha = clip(log(scale**2) - log(loc**2 + 1e-8), -8, 8)``.

The formulas live in :mod:`vdppl.kl`, shared with the Pyro backend.

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) "Variational Dropout Sparsifies Deep Neural
    Networks", ICML, arXiv:1701.05369.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike
from numpyro.distributions import (
    Distribution,
    Independent,
    MaskedDistribution,
    Normal,
    constraints,
)
from numpyro.distributions.kl import kl_divergence

from vdppl import kl as vdkl

__all__ = ["DropoutNormal", "ImproperPriorError", "LogUniform", "is_log_uniform"]


class ImproperPriorError(RuntimeError):
    """Raised when an improper prior is asked for a sample."""


class LogUniform(Distribution):
    """Improper log-uniform prior ``p(w) ∝ 1 / |w|`` (uniform on ``log |w|``).

    ``log_prob(w) = -log |w|``, up to the (infinite) normalising constant. It cannot be
    sampled: initial values come from the network's weights (see
    :func:`~vdppl.numpyro.init_to_module`). Its KL from a Gaussian posterior depends on
    the dropout rate ``alpha = sigma^2 / mu^2`` only and is registered with NumPyro::

        KL(N(mu, sigma^2) || LogUniform) ≈ k1 * sigmoid(-k2 - k3 * log_alpha)
                                           + 0.5 * softplus(-log_alpha)

    ([2], ``log alpha`` clipped to ``[-8, 8]``), or [1]'s cubic fit when the posterior is
    a :class:`DropoutNormal` in multiplicative noise mode with ``alpha <= 1``.

    :param batch_shape: batch shape; usually left empty and set by ``.expand(shape)``.

    >>> import jax.numpy as jnp
    >>> print(LogUniform().log_prob(jnp.array([-2.0, 0.5])))
    [-0.6931472  0.6931472]
    >>> LogUniform().expand([3, 4]).to_event(2).event_shape
    (3, 4)
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real
    reparametrized_params: ClassVar[list] = []

    def __init__(self, batch_shape: Sequence[int] = (), *, validate_args: bool | None = None):
        super().__init__(tuple(batch_shape), (), validate_args=validate_args)

    def expand(self, batch_shape: Sequence[int]) -> LogUniform:
        """A :class:`LogUniform` with batch shape ``batch_shape`` (no wrapper)."""
        return LogUniform(tuple(batch_shape), validate_args=self._validate_args)

    def log_prob(self, value: ArrayLike):
        log_p = -jnp.log(jnp.abs(value))
        return jnp.broadcast_to(log_p, lax.broadcast_shapes(jnp.shape(log_p), self.batch_shape))

    def sample(self, key, sample_shape: tuple[int, ...] = ()):
        raise ImproperPriorError(
            "LogUniform is an improper prior (p(w) ∝ 1/|w| has no normaliser) and cannot be "
            "sampled. Give its sites initial values instead: write the layer with "
            "vdppl.numpyro.nn.dense/conv or vdppl.numpyro.bayesianize (which record the "
            "initial weights), pass infer={'vdppl_init': array} to numpyro.sample, or give "
            "the guide init_loc_fn=numpyro.infer.init_to_value(values={...}). To predict, "
            "use numpyro.infer.Predictive(model, guide=guide, params=params, ...) or "
            "vdppl.numpyro.predict, never Predictive on the prior."
        )


class DropoutNormal(Normal):
    """``Normal(loc, sqrt(variance))`` that also knows its dropout rate ``log_alpha``.

    Emitted by :class:`~vdppl.numpyro.AutoVariationalDropout`. ``log_alpha`` is the rate
    the guide parameterizes (clipped as the noise mode requires); ``approximation`` names
    the KL approximation that holds for it (``"molchanov"`` for unbounded alpha,
    ``"kingma"`` for ``alpha <= 1``). It is built from the variance, which the local
    reparameterization uses directly (``x**2 @ variance``); under ``jit`` the square root
    is dropped when nothing samples or scores weights.

    >>> import jax.numpy as jnp
    >>> q = DropoutNormal(jnp.ones(2), jnp.array([0.25, 4.0]), jnp.log(jnp.array([0.25, 4.0])))
    >>> q.scale.tolist(), q.approximation
    ([0.5, 2.0], 'molchanov')
    """

    arg_constraints: ClassVar[dict] = {
        "loc": constraints.real,
        "variance": constraints.nonnegative,
    }
    pytree_data_fields = ("loc", "scale", "_variance", "log_alpha")
    pytree_aux_fields = ("approximation",)

    def __init__(
        self,
        loc: ArrayLike,
        variance: ArrayLike,
        log_alpha: ArrayLike,
        approximation: str = "molchanov",
        *,
        validate_args: bool | None = None,
    ):
        approximation = vdkl.check_approximation(approximation)
        shape = lax.broadcast_shapes(jnp.shape(loc), jnp.shape(variance), jnp.shape(log_alpha))
        self._variance = jnp.asarray(variance)
        self.log_alpha = jnp.asarray(log_alpha)
        self.approximation = approximation
        loc = jnp.broadcast_to(loc, shape)
        scale = jnp.broadcast_to(jnp.sqrt(self._variance), shape)
        super().__init__(loc, scale, validate_args=validate_args)

    @property
    def variance(self):
        return jnp.broadcast_to(self._variance, self.batch_shape)

    def expand(self, batch_shape: Sequence[int]) -> DropoutNormal:
        batch_shape = tuple(batch_shape)
        return DropoutNormal(
            jnp.broadcast_to(self.loc, batch_shape),
            jnp.broadcast_to(self._variance, batch_shape),
            jnp.broadcast_to(self.log_alpha, batch_shape),
            self.approximation,
            validate_args=self._validate_args,
        )


#: Wrappers that change neither a distribution's values nor its family.
VALUE_PRESERVING_WRAPPERS = (Independent, MaskedDistribution)


def base_distribution(fn: Distribution) -> Distribution:
    """``fn`` without its ``.to_event()`` / ``.mask()`` wrappers (a mask only scales log
    densities; ``Predictive`` masks every site)."""
    return vdkl.base_distribution(fn, VALUE_PRESERVING_WRAPPERS)


def is_log_uniform(fn: Distribution) -> bool:
    """True if ``fn`` is a :class:`LogUniform`, possibly under ``.to_event()``/``.mask()``."""
    return isinstance(base_distribution(fn), LogUniform)


def _broadcast_kl(kl, p: Distribution, q: Distribution):
    """``kl`` per weight: a per-unit or per-layer rate's KL counts once per weight."""
    shape = lax.broadcast_shapes(jnp.shape(kl), p.batch_shape, q.batch_shape)
    return jnp.broadcast_to(kl, shape)


@kl_divergence.register(DropoutNormal, LogUniform)
def _kl_dropout_normal_log_uniform(p: DropoutNormal, q: LogUniform):
    return _broadcast_kl(vdkl.kl_log_uniform(p.log_alpha, p.approximation), p, q)


@kl_divergence.register(Normal, LogUniform)
def _kl_normal_log_uniform(p: Normal, q: LogUniform):
    log_alpha = vdkl.log_alpha_from_sigma2(p.loc, 2 * jnp.log(p.scale))
    return _broadcast_kl(vdkl.kl_molchanov(log_alpha), p, q)
