import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import vdppl.pyro as vd
from vdppl.sparsity import report_from_masks

from .conftest import assert_close


def prune(guide, name, where):
    """Give the weights selected by ``where`` a huge noise (log alpha > 3)."""
    log_sigma2 = pyro.param(f"AutoVariationalDropout.log_sigma2.{name}")
    with torch.no_grad():
        log_sigma2[where] = 5.0


def setup(net, x):
    bnn = vd.bayesianize(net)
    guide = vd.AutoVariationalDropout(lambda x: bnn(x))
    guide(x)
    return bnn, guide


def masked_mean_output(bnn, guide, x):
    bnn.eval()
    return poutine.condition(bnn, data=guide.pruned_median())(x)


def test_report_counts():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    bnn, guide = setup(net, torch.randn(2, 4))
    prune(guide, "0.weight", (slice(0, 2), slice(None)))  # units 0, 1 lose all inputs
    prune(guide, "2.weight", (slice(None), 4))  # unit 4 of layer 0 loses all outputs
    report = vd.sparsity_report(guide)
    first, second = report.layers
    assert (first.kept, first.total, first.dead_outputs, first.dead_inputs) == (12, 20, 2, 0)
    assert (second.kept, second.total, second.dead_outputs, second.dead_inputs) == (12, 15, 0, 1)
    assert report.compression == pytest.approx(35 / 24)
    assert report.to_dict()["kept_weights"] == 24
    assert "0.weight" in str(report) and "total" in str(report)


def test_dead_inputs_of_a_grouped_conv_are_counted_per_channel():
    # weight (6, 2, 3, 3), groups 2: outputs 0-2 read input channels 0-1, outputs 3-5
    # read channels 2-3; column j of the weight is channel j in group 0, 2 + j in group 1
    bnn, guide = setup(nn.Conv2d(4, 6, 3, groups=2), torch.randn(1, 4, 5, 5))
    prune(guide, "weight", (slice(0, 3), 0))  # channel 0 loses every outgoing weight
    prune(guide, "weight", (slice(3, 6), 1))  # channel 3 too
    prune(guide, "weight", (slice(0, 2), 1))  # channel 1 keeps output 2's; outputs 0, 1 die
    (layer,) = vd.sparsity_report(guide).layers
    # pooling columns across groups would find no dead input (each column lives somewhere)
    assert (layer.dead_inputs, layer.dead_outputs) == (2, 2)
    assert guide.groups == {"weight": 2}


def test_groups_must_divide_the_outputs():
    with pytest.raises(ValueError, match="must be a multiple of groups"):
        report_from_masks({"w": np.ones((6, 2, 3, 3), bool)}, 3.0, groups={"w": 4})


def test_everything_pruned_is_infinite_compression():
    bnn, guide = setup(nn.Linear(3, 2), torch.randn(1, 3))
    prune(guide, "weight", (slice(None), slice(None)))
    assert math.isinf(vd.sparsity_report(guide).compression)


def test_compress_mlp_removes_dead_units_and_keeps_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(10, 6)
    bnn, guide = setup(net, x)
    prune(guide, "0.weight", (slice(0, 3), slice(None)))  # 3 units with no input: folded
    prune(guide, "2.weight", (slice(None), 7 - 1))  # unit 7 of layer 0 has no output
    prune(guide, "4.weight", (slice(None), slice(0, 2)))  # units 0, 1 of layer 2: no output
    expected = masked_mean_output(bnn, guide, x)
    small = vd.compress(bnn, guide)
    assert isinstance(small, nn.Sequential) and not isinstance(small, pyro.nn.PyroModule)
    assert small[0].out_features == 8 - 4 and small[2].in_features == 4
    assert small[2].out_features == 7 - 2 and small[4].in_features == 5
    small.eval()
    assert_close(small(x), expected, atol=1e-5)


def test_compress_lenet5_with_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 20),
        nn.ReLU(),
        nn.Linear(20, 10),
    )
    x = torch.randn(4, 1, 28, 28)
    bnn, guide = setup(net, x)
    with torch.no_grad():  # trained-looking BatchNorm statistics
        bnn[1].running_mean.uniform_(-1, 1)
        bnn[1].running_var.uniform_(0.5, 2)
    prune(guide, "4.weight", (slice(None), 2))  # channel 2 of conv 0 has no output
    prune(guide, "0.weight", 5)  # channel 5 of conv 0 has no input (kept: next is conv)
    prune(guide, "4.weight", 3)  # channel 3 of conv 1 has no input: folded into fc
    prune(guide, "8.weight", (slice(None), slice(16, 32)))  # channel 1 of conv 1: no output
    expected = masked_mean_output(bnn, guide, x)
    small = vd.compress(bnn, guide).eval()
    assert small[0].out_channels == 5 and small[1].num_features == 5
    assert small[4].in_channels == 5 and small[4].out_channels == 6
    assert small[8].in_features == 6 * 16
    assert_close(small(x), expected, atol=1e-4)


def test_compress_copies_trained_biases():
    net = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    bnn, guide = setup(net, x)
    with torch.no_grad():
        pyro.param("0.bias").copy_(torch.tensor([10.0, -10.0]))
    small = vd.compress(bnn, guide)
    assert_close(small[0].bias, torch.tensor([10.0, -10.0]))


def test_compress_needs_a_bayesianized_module():
    bnn, guide = setup(nn.Linear(3, 2), torch.randn(1, 3))
    with pytest.raises(TypeError, match="returned by vdppl.pyro.bayesianize"):
        vd.compress(nn.Linear(3, 2), guide)
