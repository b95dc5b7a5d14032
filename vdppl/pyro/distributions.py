"""The log-uniform prior and the variational dropout posterior, as Pyro distributions.

``LogUniform`` is the improper scale-invariant prior ``p(w) ∝ 1/|w|`` of [1] and [2].
``DropoutNormal`` is the factorized Gaussian ``N(theta, sigma^2)`` that
:class:`~vdppl.pyro.AutoVariationalDropout` emits; it also carries its dropout rate
``log_alpha`` and the name of the KL approximation that fits its noise mode, so that the
KL registered here (and used by :class:`~pyro.infer.TraceMeanField_ELBO`) needs no
guessing.

[1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pyro.distributions import Normal, TorchDistribution
from torch.distributions import constraints, register_kl
from torch.distributions.utils import lazy_property

from vdppl import kl as vdkl

__all__ = ["DropoutNormal", "LogUniform", "is_log_uniform"]


class ImproperPriorError(RuntimeError):
    """Raised when an improper prior is asked for a sample."""


class LogUniform(TorchDistribution):
    """Improper log-uniform prior ``p(w) ∝ 1 / |w|`` (uniform on ``log |w|``).

    ``log_prob(w) = -log |w|``, up to the (infinite) normalising constant. It cannot be
    sampled; initial values come from the network's weights (see
    :func:`~vdppl.pyro.init_to_module`). Its KL from a Gaussian posterior depends on the
    dropout rate ``alpha = sigma^2 / mu^2`` only, and is registered for
    :func:`torch.distributions.kl_divergence`::

        KL(N(mu, sigma^2) || LogUniform) ≈ k1 - k1 * sigmoid(k2 + k3 * log_alpha)
                                           + 0.5 * log1p(1 / alpha)

    (Molchanov et al. 2017, with ``log alpha`` clipped to ``[-8, 8]``), or the cubic fit of
    Kingma et al. 2015 when the posterior is a :class:`DropoutNormal` in multiplicative
    noise mode.

    :param batch_shape: batch shape; usually left empty and set by ``.expand(shape)``.

    >>> import torch
    >>> LogUniform().log_prob(torch.tensor([-2.0, 0.5]))
    tensor([-0.6931,  0.6931])
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, batch_shape=torch.Size(), validate_args=None):
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(LogUniform, _instance)
        TorchDistribution.__init__(new, torch.Size(batch_shape), torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_p = -torch.log(torch.abs(value))
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()):
        raise ImproperPriorError(
            "LogUniform is an improper prior (p(w) ∝ 1/|w| has no normaliser) and cannot be "
            "sampled. Give its sites initial values instead: build the network with "
            "vdppl.pyro.bayesianize (which records the module's weights) or pass "
            "init_loc_fn=pyro.infer.autoguide.init_to_value(values={...}) to the guide. "
            "pyro.infer.Predictive runs the model once without the guide to guess its "
            "plates: give it the guide's model, Predictive(guide.model, guide=guide, ...), "
            "or use vdppl.pyro.predict."
        )

    def rsample(self, sample_shape=torch.Size()):
        return self.sample(sample_shape)


class DropoutNormal(Normal):
    """``Normal(loc, sqrt(variance))`` that also knows its dropout rate ``log_alpha``.

    Emitted by :class:`~vdppl.pyro.AutoVariationalDropout`. ``log_alpha`` is the rate the
    guide parameterizes (clipped as the noise mode requires); ``approximation`` names the
    KL approximation that holds for it (``"molchanov"`` for unbounded alpha,
    ``"kingma"`` for ``alpha <= 1``). It is built from the variance, which the local
    reparameterization uses directly (``x**2 @ variance``); ``scale`` is computed only
    when something samples or scores weights.
    """

    arg_constraints: ClassVar[dict] = {
        "loc": constraints.real,
        "variance": constraints.nonnegative,
    }

    def __init__(self, loc, variance, log_alpha, approximation="molchanov", validate_args=None):
        self.loc, self._variance = loc, variance
        self.log_alpha = log_alpha
        self.approximation = approximation
        batch_shape = _broadcast(loc.shape, variance.shape, log_alpha.shape)
        TorchDistribution.__init__(self, batch_shape, validate_args=validate_args)

    @property
    def variance(self):
        return self._variance.expand(self.batch_shape)

    @lazy_property
    def scale(self):
        return self._variance.sqrt().expand(self.batch_shape)

    @property
    def stddev(self):
        return self.scale

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return DropoutNormal(
            self.loc.expand(batch_shape),
            self._variance.expand(batch_shape),
            self.log_alpha.expand(batch_shape),
            self.approximation,
            validate_args=False,
        )


def _broadcast(*shapes: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes``, without its cost (tens of microseconds of Python, paid
    for every weight site at every step) when the shapes are equal, the usual case."""
    first = shapes[0]
    if all(shape == first for shape in shapes[1:]):
        return torch.Size(first)
    return torch.broadcast_shapes(*shapes)


def is_log_uniform(fn) -> bool:
    """True if ``fn`` is a :class:`LogUniform`, possibly wrapped by ``.to_event()``."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, LogUniform)


@register_kl(DropoutNormal, LogUniform)
def _kl_dropout_normal_log_uniform(p, q):
    kl = vdkl.kl_log_uniform(p.log_alpha, p.approximation)
    return kl.expand(_broadcast(kl.shape, q.batch_shape))


@register_kl(Normal, LogUniform)
def _kl_normal_log_uniform(p, q):
    log_alpha = vdkl.clip_log_alpha(2 * torch.log(p.scale) - torch.log(p.loc.pow(2) + 1e-8))
    kl = vdkl.kl_molchanov(log_alpha)
    return kl.expand(_broadcast(kl.shape, q.batch_shape))
