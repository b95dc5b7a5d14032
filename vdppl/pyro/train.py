"""The Pyro side of ``vdppl train``: model, guide and ELBO for each method, and the loop.

The CLI (:mod:`vdppl.cli`) is backend-free; it drives a :class:`Trainer`, which owns
everything torch and Pyro: the network from :mod:`vdppl.models`, the model written the
way a Pyro user would write it, the guide and ELBO that ``--method`` names, checkpoints,
and predictions as NumPy arrays.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta

from vdppl import kl as vdkl
from vdppl import models
from vdppl.pyro import checkpoint
from vdppl.pyro.distributions import LogUniform
from vdppl.pyro.elbo import LocalReparamELBO
from vdppl.pyro.gradreg import GradientRegularizedELBO, variance_lr
from vdppl.pyro.guide import AutoVariationalDropout
from vdppl.pyro.init import init_to_module
from vdppl.pyro.models import build
from vdppl.pyro.nn import _BayesLayer, bayesianize
from vdppl.pyro.predict import predict
from vdppl.runs import Config, check_pretrained, guide_options, kl_weight_at, lr_factor_at
from vdppl.sparsity import SparsityReport, report_from_masks

__all__ = ["Trainer"]

VD_METHODS = ("sparse-vd", "vd-a", "vd-b", "gaussian-dropout")


class Trainer:
    """Fit one ``Config`` on one dataset with Pyro."""

    def __init__(self, config: Config, dataset):
        self.config, self.data = config, dataset
        pyro.clear_param_store()
        pyro.set_rng_seed(config.seed)
        # Global on purpose: the Trainer is the CLI's process-wide driver, and the data are
        # validated once when loaded. Library code uses pyro.validation_enabled(...).
        pyro.enable_validation(False)
        self.classification = dataset.task == "classification"
        outputs = dataset.num_classes if self.classification else 1
        layers = models.architecture(config.arch, outputs, tuple(config.hidden))
        self.net = build(layers, tuple(dataset.input_shape))
        if config.pretrained:
            self._load_pretrained(Path(config.pretrained))
        prior = dist.Normal(0.0, config.map_prior_scale) if config.method == "map" else LogUniform()
        self.bnn = bayesianize(self.net, prior=prior)
        self.n_train = len(dataset.x_train)
        self.x_train = torch.as_tensor(dataset.x_train)
        self.y_train = torch.as_tensor(dataset.y_train)
        self.x_test = torch.as_tensor(dataset.x_test)
        self.y_test = torch.as_tensor(dataset.y_test)
        if config.method == "map":
            self.guide = AutoDelta(self.model, init_loc_fn=init_to_module)
            self.elbo = Trace_ELBO()
        elif config.method == "gradreg":
            self.guide = AutoVariationalDropout(self.model, **guide_options(config))
            self.elbo = GradientRegularizedELBO()
        else:
            self.guide = AutoVariationalDropout(self.model, **guide_options(config))
            self.elbo = LocalReparamELBO()
        self.optim = pyro.optim.LambdaLR(
            {
                "optimizer": torch.optim.Adam,
                "optim_args": variance_lr(config.lr, config.variance_lr or config.lr),
                "lr_lambda": lambda epoch: lr_factor_at(epoch, config.epochs, config.lr_schedule),
            }
        )
        self.svi = SVI(self.model, self.guide, self.optim, self.elbo)
        self.guide(self.x_train[:2], self.y_train[:2])  # create the parameters now

    # ------------------------------------------------------------------ model
    def model(self, x, y=None):
        """The Bayesian network and its likelihood, minibatch-scaled by the plate."""
        out = self.bnn(x)
        if self.classification:
            logits = pyro.deterministic("logits", out)
            with pyro.plate("data", self.n_train, subsample=torch.arange(len(x))):
                return pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        mean = pyro.deterministic("mean", out.squeeze(-1))
        if self.config.obs_noise == "learned":  # a point estimate, for every method
            sigma = pyro.param("obs_noise", torch.tensor(1.0), constraint=constraints.positive)
        else:
            sigma = torch.tensor(float(self.config.obs_noise))
        with pyro.plate("data", self.n_train, subsample=torch.arange(len(x))):
            return pyro.sample("y", dist.Normal(mean, sigma), obs=y)

    def _load_pretrained(self, run: Path) -> None:
        """Start from a MAP run's weights and biases (same dataset and architecture)."""
        path = check_pretrained(run, self.config)
        state = torch.load(path, weights_only=False)["param_store"]
        params = state["params"]
        with torch.no_grad():
            for name, module in self.net.named_modules():
                if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    continue
                for attr, keys in (
                    (
                        "weight",
                        [f"AutoDelta.{name}.weight", f"AutoVariationalDropout.theta.{name}.weight"],
                    ),
                    ("bias", [f"{name}.bias_unconstrained", f"{name}.bias"]),
                ):
                    key = next((k for k in keys if k in params), None)
                    if key is None:
                        raise ValueError(f"--pretrained {run} has no value for {name}.{attr}")
                    getattr(module, attr).copy_(params[key])

    # --------------------------------------------------------------- training
    def epoch(self, epoch: int, generator: torch.Generator | None = None) -> dict[str, float]:
        """One pass over the shuffled training set; returns per-example loss terms.

        Each ``svi.step`` returns an estimate of the whole training set's negative ELBO (the
        plate scales the minibatch's log-likelihood by ``N / B``), so the epoch's loss is the
        mean over minibatches, divided by ``N`` to give nats per example.
        """
        beta = kl_weight_at(epoch, self.config.warmup, self.config.warmup_start)
        if isinstance(self.elbo, (LocalReparamELBO, GradientRegularizedELBO)):
            self.elbo.kl_weight = beta
        self.bnn.train()
        start = time.perf_counter()
        total, steps = 0.0, 0
        for batch in torch.randperm(self.n_train).split(self.config.batch_size):
            loss = self.svi.step(self.x_train[batch], self.y_train[batch])
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss} in epoch {epoch + 1}: training diverged. Lower "
                    "--lr, or lengthen --warmup; the last good checkpoint is kept."
                )
            total, steps = total + loss, steps + 1
        self.optim.step()  # advance the learning-rate schedule by one epoch
        seconds = time.perf_counter() - start
        kl = self.kl()
        loss = total / (steps * self.n_train)
        return {
            "loss": loss,
            "kl": kl / self.n_train,
            "data": loss - beta * kl / self.n_train,
            "kl_weight": beta,
            "seconds": seconds,
        }

    def observation_noise(self) -> float:
        """The regression head's observation noise std (standardized targets): fixed by
        ``--obs-noise``, or the fitted point estimate ``obs_noise`` in the param store."""
        if self.config.obs_noise != "learned":
            return float(self.config.obs_noise)
        return float(pyro.param("obs_noise").detach())

    def kl(self) -> float:
        """The analytic KL of the weight sites (0 for MAP, which has none)."""
        if not isinstance(self.guide, AutoVariationalDropout):
            return 0.0
        approx = self.guide.kl_approximation
        return sum(
            float(vdkl.kl_log_uniform(la, approx).sum()) for la in self.guide.log_alpha().values()
        )

    # ------------------------------------------------------------ predictions
    @torch.no_grad()
    def pruned_outputs(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Outputs of the deterministic predictor: the pruned mean network (MAP: the
        point estimate)."""
        self.bnn.eval()
        x = torch.as_tensor(x)
        if isinstance(self.guide, AutoVariationalDropout):
            draws = predict(self.model, self.guide, x, mode="mean", threshold=self.config.threshold)
        else:
            draws = predict_map(self.model, self.guide, x)
        site = "logits" if self.classification else "mean"
        return draws[site][0].numpy()

    @torch.no_grad()
    def predictive_probs(self, x, num_samples: int) -> np.ndarray:
        """Class probabilities of ``num_samples`` LRT draws, shape ``(draws, n, classes)``."""
        self.bnn.eval()
        x = torch.as_tensor(x)
        if not isinstance(self.guide, AutoVariationalDropout):
            logits = predict_map(self.model, self.guide, x)["logits"]
        else:
            logits = predict(
                self.model,
                self.guide,
                x,
                mode="lrt",
                num_samples=num_samples,
                threshold=self.config.threshold,
                return_sites=["logits"],
            )["logits"]
        return torch.softmax(logits, -1).numpy()

    def inference_data(self, x, y, num_samples: int, include_x: bool, progress: bool = False):
        from vdppl.pyro.diagnostics import to_inference_data

        self.bnn.eval()
        if not isinstance(self.guide, AutoVariationalDropout):
            raise ValueError("MAP runs have no posterior draws")
        return to_inference_data(
            self.model,
            self.guide,
            torch.as_tensor(x),
            torch.as_tensor(y),
            num_samples=num_samples,
            mode="lrt",
            threshold=self.config.threshold,
            include_x=include_x,
            method=self.config.method,
            progress=progress,
        )

    def sparsity(self) -> SparsityReport:
        """Per-layer sparsity (MAP: every weight kept)."""
        if isinstance(self.guide, AutoVariationalDropout):
            masks = {k: v.numpy() for k, v in self.guide.mask(self.config.threshold).items()}
        else:
            masks = {
                name: np.ones(tuple(m.weight_init.shape), bool)
                for name, m in _bayes_layers(self.bnn)
            }
        return report_from_masks(masks, self.config.threshold)

    def plain_predictor(self) -> dict:
        """The deterministic network as a plain torch module (pruned and compressed for
        variational dropout), its predict function on NumPy inputs, and how many hidden
        units compression removed."""
        from vdppl.pyro.sparsity import compress

        small = compress(self.bnn, self.guide, self.config.threshold).eval()
        before = [m.weight.shape[0] for m in self.net if hasattr(m, "weight")]
        after = [m.weight.shape[0] for m in small if hasattr(m, "weight")]

        @torch.no_grad()
        def predict_fn(x):
            return small(torch.as_tensor(x)).numpy()

        return {"module": small, "predict": predict_fn,
                "units_removed": int(sum(before) - sum(after))}  # fmt: skip

    def log_alpha(self) -> dict[str, np.ndarray]:
        if not isinstance(self.guide, AutoVariationalDropout):
            return {}
        return {k: v.numpy() for k, v in self.guide.log_alpha().items()}

    # ------------------------------------------------------------ checkpoints
    def save(self, path: Path, **extra) -> None:
        checkpoint.save(path, module=self.bnn, optimizer=self.optim, **extra)

    def load(self, path: Path) -> dict:
        return checkpoint.load(path, module=self.bnn, optimizer=self.optim)


def _bayes_layers(bnn):
    for _, module in bnn.named_modules():
        if isinstance(module, _BayesLayer):
            yield module._pyro_get_fullname("weight"), module


@torch.no_grad()
def predict_map(model, guide, x):
    """The model's deterministic sites at the MAP point."""
    trace = pyro.poutine.trace(pyro.poutine.condition(model, data=guide.median())).get_trace(x)
    return {
        name: site["value"][None]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["infer"].get("_deterministic")
    }
