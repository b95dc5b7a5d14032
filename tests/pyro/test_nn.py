import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import vdppl.pyro as vd
from vdppl.pyro.nn import BayesConv, BayesLinear

from .conftest import assert_close


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def test_converts_linear_and_conv_and_leaves_the_original_alone():
    net = lenet5()
    bnn = vd.bayesianize(net)
    kinds = [type(m).__name__ for m in bnn]
    assert kinds[0] == "BayesConv" and kinds[3] == "BayesConv" and kinds[7] == "BayesLinear"
    assert isinstance(net[0], nn.Conv2d) and not isinstance(net[0], BayesConv)
    assert isinstance(bnn, pyro.nn.PyroModule)


def test_weight_sites_named_like_parameters_with_the_prior():
    bnn = vd.bayesianize(lenet5())
    guide = vd.AutoVariationalDropout(lambda x: bnn(x))
    guide(torch.randn(2, 1, 28, 28))
    assert guide.dropout_sites == ["0.weight", "3.weight", "7.weight", "9.weight"]
    site = guide.prototype_trace.nodes["3.weight"]
    assert site["fn"].event_shape == (50, 20, 5, 5) and site["infer"]["local_reparam"]


def test_mean_network_equals_the_original_network():
    net = lenet5()
    bnn = vd.bayesianize(net)
    guide = vd.AutoVariationalDropout(lambda x: bnn(x))
    x = torch.randn(3, 1, 28, 28)
    guide(x)
    out = poutine.condition(bnn, data=guide.median())(x)
    assert_close(out, net(x), atol=1e-5)


def test_batchnorm_stays_deterministic_and_custom_prior():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    bnn = vd.bayesianize(net, prior=pyro.distributions.Normal(0.0, 1.0))
    assert type(bnn[1]).__name__ == "PyroBatchNorm1d"
    assert isinstance(bnn[0].prior, pyro.distributions.Normal)


@pytest.mark.parametrize(
    "module,match",
    [
        (nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), "does not support Embedding"),
        (nn.Sequential(nn.ConvTranspose2d(1, 2, 3)), "does not support ConvTranspose2d"),
        (nn.Sequential(nn.ReLU(), nn.Tanh()), "has no Linear or Conv"),
    ],
    ids=["embedding", "conv-transpose", "no-layer"],
)
def test_unsupported_modules(module, match):
    with pytest.raises(ValueError, match=match):
        vd.bayesianize(module)


def test_unknown_layer_with_parameters():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.s * x

    with pytest.raises(ValueError, match="does not know the layer Scale"):
        vd.bayesianize(nn.Sequential(nn.Linear(2, 2), Scale()))
    bnn = vd.bayesianize(nn.Sequential(nn.Linear(2, 2), Scale()), unsupported="deterministic")
    assert isinstance(bnn[0], BayesLinear)


def test_bad_arguments():
    with pytest.raises(TypeError, match="expects a torch.nn.Module"):
        vd.bayesianize(lambda x: x)
    with pytest.raises(ValueError, match="unsupported must be"):
        vd.bayesianize(nn.Linear(2, 2), unsupported="ignore")
    with pytest.raises(ValueError, match="prior must be scalar"):
        vd.bayesianize(nn.Linear(2, 2), prior=vd.LogUniform().expand([2]))
    with pytest.raises(TypeError, match="prior must be a torch/pyro Distribution"):
        vd.bayesianize(nn.Linear(2, 2), prior="log-uniform")
    with pytest.raises(ValueError, match="padding_mode='zeros' only"):
        vd.bayesianize(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))


def fitted(module, x):
    pyro.clear_param_store()
    bnn = vd.bayesianize(module)
    guide = vd.AutoVariationalDropout(lambda x: bnn(x))
    guide(x)
    return bnn, guide


def test_input_with_the_wrong_shape():
    bnn, guide = fitted(nn.Linear(4, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="expects inputs whose last dim is 4; got shape"):
        poutine.condition(bnn, data=guide.median())(torch.randn(3, 5))
    bnn, guide = fitted(nn.Conv2d(3, 2, 3), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 3"):
        poutine.condition(bnn, data=guide.median())(torch.randn(1, 8, 8, 3))


def test_nan_in_data():
    bnn, guide = fitted(nn.Linear(4, 2), torch.randn(3, 4))
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        poutine.condition(bnn, data=guide.median())(x)


def test_running_the_improper_prior_without_a_guide():
    bnn = vd.bayesianize(nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="improper prior"):
        bnn(torch.randn(1, 4))


def classification_model(bnn, n=6):
    def model(x, y=None):
        logits = pyro.deterministic("logits", bnn(x))
        with pyro.plate("data", n, subsample=torch.arange(len(x))):
            pyro.sample("y", pyro.distributions.Categorical(logits=logits), obs=y)

    return model


def test_nan_check_reads_the_data_but_not_the_activations_on_the_training_path(monkeypatch):
    bnn = vd.bayesianize(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)))
    model = classification_model(bnn)
    guide = vd.AutoVariationalDropout(model)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    guide(x, y)
    checked = []
    isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda t: checked.append(tuple(t.shape)) or isfinite(t))
    elbo = vd.LocalReparamELBO()
    elbo.loss(model, guide, x, y)
    assert (6, 4) in checked and (6, 5) not in checked  # hidden input requires grad
    checked.clear()
    vd.predict(model, guide, x)  # no gradient recorded: every layer's input is checked
    assert (6, 4) in checked and (6, 5) in checked
    bad = x.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="input of layer '0.weight' has NaN or inf"):
        elbo.loss(model, guide, bad, y)
    with pyro.validation_enabled(False):
        poutine.condition(bnn, data=guide.median())(bad)  # no check without validation
    with torch.no_grad():
        pyro.param("0.bias").fill_(float("nan"))  # diverged parameters
    with pytest.raises(ValueError, match="Expected parameter logits"):
        elbo.loss(model, guide, x, y)  # training path: Pyro's check of the likelihood
    with pytest.raises(ValueError, match="layer '2.weight' .*parameters have diverged"):
        vd.predict(model, guide, x)


def test_predict_puts_the_module_in_eval_mode_for_the_call():
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Dropout(0.5), nn.Linear(5, 2))
    bnn = vd.bayesianize(net)
    model = classification_model(bnn)
    guide = vd.AutoVariationalDropout(model)
    x = torch.randn(6, 4) * 2 + 3
    guide(x, torch.randint(0, 2, (6,)))
    with torch.no_grad():
        bnn[1].running_mean.uniform_(-1, 1)
    stats = bnn[1].running_mean.clone(), int(bnn[1].num_batches_tracked)
    bnn[2].eval()  # a submodule in its own mode stays in it
    out = vd.predict(model, guide, x, module=bnn)["logits"][0]
    assert bnn.training and bnn[1].training and not bnn[2].training  # modes restored
    assert torch.equal(bnn[1].running_mean, stats[0])  # BatchNorm statistics not updated
    assert int(bnn[1].num_batches_tracked) == stats[1]
    # the reference: the torch way, the user's own .eval()
    bnn.eval()
    assert torch.equal(out, vd.predict(model, guide, x)["logits"][0])
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        vd.predict(model, guide, x, module="net")
