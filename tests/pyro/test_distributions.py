import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from torch.distributions import kl_divergence

import vdppl.pyro as vd
from vdppl import kl as vdkl
from vdppl.pyro.distributions import ImproperPriorError

from .conftest import assert_close


def test_log_prob_is_minus_log_abs():
    w = torch.tensor([-2.0, 0.5, 3.0])
    assert_close(vd.LogUniform().log_prob(w), -torch.log(w.abs()))


def test_expand_and_to_event_shapes():
    prior = vd.LogUniform().expand([3, 4]).to_event(2)
    assert prior.batch_shape == () and prior.event_shape == (3, 4)
    assert prior.log_prob(torch.ones(5, 3, 4)).shape == (5,)


def test_sample_raises_a_clear_error():
    with pytest.raises(ImproperPriorError, match="improper prior .* cannot be sampled"):
        vd.LogUniform().expand([2]).sample()
    with pytest.raises(ImproperPriorError, match="init_to_value"):
        pyro.sample("w", vd.LogUniform())


@pytest.mark.parametrize("approximation", ["molchanov", "kingma"])
def test_kl_of_dropout_normal_uses_its_approximation(approximation):
    log_alpha = torch.linspace(-6, 0, 7)
    q = vd.DropoutNormal(torch.ones(7), log_alpha.exp(), log_alpha, approximation)
    kl = kl_divergence(q, vd.LogUniform().expand([7]))
    assert_close(kl, vdkl.kl_log_uniform(log_alpha, approximation))


def test_dropout_normal_is_the_normal_with_that_variance():
    loc, var = torch.tensor([1.0, -2.0]), torch.tensor([0.25, 4.0])
    q = vd.DropoutNormal(loc, var, torch.log(var / loc**2))
    w = torch.tensor([0.3, 1.0])
    assert_close(q.log_prob(w), dist.Normal(loc, var.sqrt()).log_prob(w))
    assert_close(q.scale, var.sqrt())
    assert q.expand([3, 2]).sample().shape == (3, 2)
    zero = vd.DropoutNormal(torch.zeros(2), torch.zeros(2), torch.zeros(2), validate_args=True)
    assert_close(zero.variance, torch.zeros(2))  # theta = 0 in multiplicative mode is valid


def test_kl_of_plain_normal_uses_molchanov_and_independent_sums():
    loc, scale = torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[0.1, 2.0], [0.5, 0.3]])
    expected = vdkl.kl_molchanov(vdkl.clip_log_alpha(torch.log(scale**2 / loc**2)))
    kl = kl_divergence(
        dist.Normal(loc, scale).to_event(2), vd.LogUniform().expand([2, 2]).to_event(2)
    )
    assert_close(kl, expected.sum(), atol=1e-5)


def test_trace_mean_field_elbo_uses_the_analytic_kl():
    # Model with one LogUniform site and no data: the ELBO must be exactly -KL.
    loc, scale = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([0.3, 0.2, 4.0])

    def model():
        pyro.sample("w", vd.LogUniform().expand([3]).to_event(1))

    def guide():
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))

    loss = TraceMeanField_ELBO().loss(model, guide)
    expected = vdkl.kl_molchanov(vdkl.clip_log_alpha(torch.log(scale**2 / loc**2))).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
