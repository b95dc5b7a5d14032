import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions.kl import kl_divergence
from numpyro.handlers import seed
from numpyro.infer import TraceMeanField_ELBO

import vdppl.numpyro as vd
from vdppl import kl as vdkl
from vdppl.numpyro.distributions import ImproperPriorError

from .conftest import assert_close


def test_log_prob_is_minus_log_abs():
    w = jnp.array([-2.0, 0.5, 3.0])
    assert_close(vd.LogUniform().log_prob(w), -jnp.log(jnp.abs(w)))


def test_expand_and_to_event_shapes():
    prior = vd.LogUniform().expand([3, 4]).to_event(2)
    assert prior.batch_shape == () and prior.event_shape == (3, 4)
    assert prior.log_prob(jnp.ones((5, 3, 4))).shape == (5,)
    assert vd.LogUniform().expand([2]).log_prob(jnp.ones(())).shape == (2,)


def test_sample_raises_a_clear_error():
    with pytest.raises(ImproperPriorError, match="improper prior .* cannot be sampled"):
        vd.LogUniform().expand([2]).sample(jax.random.key(0))
    with pytest.raises(ImproperPriorError, match="init_to_value"), seed(rng_seed=0):
        numpyro.sample("w", vd.LogUniform())


@pytest.mark.parametrize("approximation", ["molchanov", "kingma"])
def test_kl_of_dropout_normal_uses_its_approximation(approximation):
    log_alpha = jnp.linspace(-6, 0, 7)
    q = vd.DropoutNormal(jnp.ones(7), jnp.exp(log_alpha), log_alpha, approximation)
    kl = kl_divergence(q, vd.LogUniform().expand([7]))
    assert_close(kl, vdkl.kl_log_uniform(log_alpha, approximation))


def test_kl_of_a_shared_rate_counts_once_per_weight():
    # a per-unit rate of shape (1, 3) on a (2, 3) weight: six KL terms, not three
    q = vd.DropoutNormal(jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.zeros((1, 3)), "kingma")
    kl = kl_divergence(q.to_event(2), vd.LogUniform().expand([2, 3]).to_event(2))
    assert_close(kl, 6 * vdkl.kl_kingma(jnp.zeros(())))


def test_dropout_normal_is_the_normal_with_that_variance():
    loc, var = jnp.array([1.0, -2.0]), jnp.array([0.25, 4.0])
    q = vd.DropoutNormal(loc, var, jnp.log(var / loc**2))
    w = jnp.array([0.3, 1.0])
    assert_close(q.log_prob(w), dist.Normal(loc, jnp.sqrt(var)).log_prob(w))
    assert_close(q.variance, var)
    assert q.expand([3, 2]).sample(jax.random.key(0)).shape == (3, 2)
    leaves, tree = jax.tree.flatten(q)  # a pytree, like every numpyro distribution
    assert jax.tree.unflatten(tree, leaves).approximation == "molchanov"
    with pytest.raises(ValueError, match="Unknown KL approximation"):
        vd.DropoutNormal(loc, var, var, "gaussian")


def test_kl_of_plain_normal_uses_molchanov_and_independent_sums():
    loc = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    scale = jnp.array([[0.1, 2.0], [0.5, 0.3]])
    expected = vdkl.kl_molchanov(vdkl.clip_log_alpha(jnp.log(scale**2 / loc**2)))
    kl = kl_divergence(
        dist.Normal(loc, scale).to_event(2), vd.LogUniform().expand([2, 2]).to_event(2)
    )
    # log(scale^2) - log(loc^2 + 1e-8) vs log(scale^2 / loc^2): 1e-8 / loc^2 <= 4e-8 relative
    assert_close(kl, expected.sum(), atol=1e-5)


def test_trace_mean_field_elbo_uses_the_analytic_kl():
    # Model with one LogUniform site and no data: the ELBO must be exactly -KL.
    loc, scale = jnp.array([1.0, -0.5, 2.0]), jnp.array([0.3, 0.2, 4.0])

    def model():
        numpyro.sample("w", vd.LogUniform().expand([3]).to_event(1))

    def guide():
        numpyro.sample("w", dist.Normal(loc, scale).to_event(1))

    loss = TraceMeanField_ELBO().loss(jax.random.key(0), {}, model, guide)
    expected = vdkl.kl_molchanov(vdkl.clip_log_alpha(jnp.log(scale**2 / loc**2))).sum()
    assert_close(loss, expected, rtol=1e-6)
