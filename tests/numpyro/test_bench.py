"""The NumPyro bench's hand-written step computes vdppl's loss; with --run-slow, the targets.

The smoke runs of every bench (JSON schema, both backends) are in tests/test_bench_cli.py.
"""

import jax
import jax.numpy as jnp
import pytest

from vdppl.numpyro import bench


def test_plain_step_computes_the_same_loss_as_vdppl():
    # Same weights, log sigma^2 = -30: the LRT noise on every pre-activation has a standard
    # deviation below 1e-5, so both losses are N/B * CE(theta) + sum KL up to float32
    # rounding of ~4e5 summed terms (rtol 1e-5). LeNet-5 runs the conv and dense paths.
    net = bench.network("lenet5")
    k_init, k_x, k_svi = jax.random.split(jax.random.key(0), 3)
    variables = net.module.init(k_init, jnp.zeros((1, *net.input_shape)))
    x = jax.random.uniform(k_x, (8, *net.input_shape))
    y = jnp.arange(8) % 10
    step, state = bench.plain_sparse_vd_step(net, variables, init_log_sigma2=-30.0)
    _, plain = step(state, x, y)
    steps = bench.vdppl_steps(net, variables, k_svi, extras=False, init_log_sigma2=-30.0)
    update, svi_state = steps["vdppl_lrt"]
    _, loss = update(svi_state, x, y)
    assert float(loss) == pytest.approx(float(plain), rel=1e-5)


@pytest.mark.slow
def test_speed_target(optimized_xla):
    # Issue target: vdppl's jitted LRT step within 1.15x of hand-written JAX (median of 7 x 20).
    out = bench.speed()
    assert out["ratio_to_plain"]["vdppl_lrt"] <= 1.15, out


@pytest.mark.slow
def test_variance_ordering_at_initialisation(optimized_xla):
    # Kingma et al. Table 1: one weight sample per minibatch has the highest variance.
    v = bench.variance()["estimators"]
    for layer in ("bottom", "top"):
        assert v["weight_per_minibatch"][layer] > v["local_reparam"][layer]
        assert v["weight_per_minibatch"][layer] > v["weight_per_example"][layer]
