"""Sparsity report and compression of a network fitted with variational dropout.

[2] Molchanov, Ashukha, Vetrov (2017) "Variational Dropout Sparsifies Deep Neural
    Networks", arXiv:1701.05369.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from vdppl import kl as vdkl
from vdppl.pyro.nn import _BayesLayer, point_estimate
from vdppl.sparsity import SparsityReport, report_from_masks

__all__ = ["SparsityReport", "compress", "sparsity_report"]

_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def sparsity_report(guide, threshold: float = vdkl.DEFAULT_THRESHOLD) -> SparsityReport:
    """Kept/total weights per layer, overall ``|W| / |W != 0|`` and dead units.

    Weights with ``log alpha >= threshold`` count as pruned (``log alpha > 3`` in [2]).
    A grouped convolution's input channels are counted per group (``guide.groups``).
    ``str(report)`` is a table; ``report.to_dict()`` is JSON-ready.

    :param guide: a fitted :class:`~vdppl.pyro.AutoVariationalDropout`.
    """
    masks = {name: m.cpu().numpy() for name, m in guide.mask(threshold).items()}
    return report_from_masks(masks, threshold, groups=guide.groups)


def _copy_point_estimates(module: nn.Module, plain: nn.Module) -> None:
    """Copy every non-Bayesian parameter and buffer (fitted values) into ``plain``."""
    for path, sub in module.named_modules():
        if isinstance(sub, _BayesLayer):
            continue
        target = plain.get_submodule(path)
        names = list(getattr(sub, "_pyro_params", {})) + [
            n for n, _ in sub.named_buffers(recurse=False)
        ]
        for name in names:
            value = point_estimate(sub, name)
            if value is not None:
                getattr(target, name).data.copy_(value)


def _fill_layers(module: nn.Module, plain: nn.Module, weights: dict) -> None:
    for path, layer in module.named_modules():
        if not isinstance(layer, _BayesLayer):
            continue
        target = plain.get_submodule(path)
        target.weight.data.copy_(weights[layer._pyro_get_fullname("weight")])
        if target.bias is not None:
            target.bias.data.copy_(point_estimate(layer, "bias"))


def compress(module: nn.Module, guide, threshold: float = vdkl.DEFAULT_THRESHOLD) -> nn.Module:
    """A plain ``torch.nn`` copy of ``module`` with pruned mean weights, dead units removed.

    Weights are ``theta * (log_alpha < threshold)`` (the deterministic predictor of [2]);
    biases and other parameters are their fitted point estimates. In an ``nn.Sequential``
    whose Linear/Conv layers are separated by elementwise activations, dropout,
    pooling, BatchNorm or ``Flatten``, units are removed when

    * all their outgoing weights are pruned (their value is never used), or
    * all their incoming weights are pruned and the next layer is ``Linear``: the unit
      then outputs the constant ``f(b)``, which is folded into the next layer's bias.

    In eval mode the result gives the same outputs as the masked mean network (up to
    float rounding). Other architectures keep their shapes (masking only).

    :param module: the network returned by :func:`~vdppl.pyro.bayesianize`.
    :param guide: its fitted :class:`~vdppl.pyro.AutoVariationalDropout` (or a point
        estimate such as ``AutoDelta``, whose median is used unpruned).
    """
    template = getattr(module, "_vdppl_template", None)
    if template is None:
        raise TypeError(
            "compress needs the network returned by vdppl.pyro.bayesianize (it keeps the "
            f"plain architecture); got {type(module).__name__}"
        )
    plain = copy.deepcopy(template)
    with torch.no_grad():
        _copy_point_estimates(module, plain)
        pruned = getattr(guide, "pruned_median", None)  # point-estimate guides: median()
        _fill_layers(module, plain, pruned(threshold) if pruned else guide.median())
        if isinstance(plain, nn.Sequential):
            plain = _remove_dead_units(plain)
    return plain


# ----------------------------------------------------------------- dead units
def _slots(prev: nn.Module, nxt: nn.Module, between: list[nn.Module]) -> int | None:
    """Inputs of ``nxt`` per output unit of ``prev`` (1, or H*W after Flatten)."""
    n_out = prev.out_features if isinstance(prev, nn.Linear) else prev.out_channels
    if isinstance(nxt, nn.Linear):
        if nxt.in_features % n_out:
            return None
        per = nxt.in_features // n_out
        if per > 1 and not any(isinstance(m, nn.Flatten) for m in between):
            return None
        return per
    if nxt.groups != 1 or nxt.in_channels != n_out:
        return None
    return 1


def _foldable_constant(prev, bias, between) -> torch.Tensor | None:
    """``f(b)`` per unit of ``prev`` when a unit with zero weights outputs a constant."""
    if bias is None:
        return None
    x = bias.reshape((1, -1) + (1,) * (0 if isinstance(prev, nn.Linear) else prev.weight.dim() - 2))
    for m in between:
        if isinstance(m, _POOL):
            pads = m.padding if isinstance(m.padding, tuple) else (m.padding,)
            if any(p != 0 for p in pads):
                return None
            continue  # pooling a constant map without padding leaves it unchanged
        if isinstance(m, nn.Flatten):
            continue
        was_training = m.training
        x = m.eval()(x)
        m.train(was_training)
    return x.reshape(-1)


def _pair_ok(prev, nxt, between) -> bool:
    if not (isinstance(prev, _AFFINE) and isinstance(nxt, _AFFINE)):
        return False
    if getattr(prev, "groups", 1) != 1:
        return False
    return all(isinstance(m, _ELEMENTWISE + _POOL + _NORM + (nn.Flatten,)) for m in between)


def _shrink_pair(prev, nxt, between):
    per = _slots(prev, nxt, between)
    if per is None:
        return prev, nxt, between
    n_out = prev.weight.shape[0]
    w_next = nxt.weight.data
    cols = w_next.reshape(w_next.shape[0], n_out, -1)  # (out, unit of prev, slot)
    outgoing_dead = ~(cols != 0).any(dim=2).any(dim=0)
    incoming_dead = ~(prev.weight.reshape(n_out, -1) != 0).any(dim=1)
    const = _foldable_constant(prev, prev.bias, between) if isinstance(nxt, nn.Linear) else None
    fold = incoming_dead & ~outgoing_dead if const is not None and nxt.bias is not None else None
    remove = outgoing_dead | (fold if fold is not None else torch.zeros_like(outgoing_dead))
    if not remove.any() or remove.all():
        return prev, nxt, between
    if fold is not None and fold.any():
        contribution = cols[:, fold, :].sum(dim=2) @ const[fold]
        nxt.bias.data += contribution
    keep = ~remove
    new_prev = _resized(prev, out_keep=keep)
    slot_keep = keep.repeat_interleave(per) if isinstance(nxt, nn.Linear) else keep
    new_next = _resized(nxt, in_keep=slot_keep)
    new_between = [_resized_norm(m, keep) if isinstance(m, _NORM) else m for m in between]
    return new_prev, new_next, new_between


def _resized(layer, out_keep=None, in_keep=None):
    weight, bias = layer.weight.data, None if layer.bias is None else layer.bias.data
    if out_keep is not None:
        weight, bias = weight[out_keep], None if bias is None else bias[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        new = type(layer)(
            weight.shape[1],
            weight.shape[0],
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias is not None,
            layer.padding_mode,
        )
    new = new.to(dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    new.train(layer.training)
    return new


def _resized_norm(norm, keep):
    new = type(norm)(
        int(keep.sum()), norm.eps, norm.momentum, norm.affine, norm.track_running_stats
    )
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(norm, name)
        if value is not None:
            getattr(new, name).data.copy_(value[keep])
    if norm.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(norm.num_batches_tracked)
    new.train(norm.training)
    return new


def _remove_dead_units(seq: nn.Sequential) -> nn.Sequential:
    layers = list(seq)
    affine = [i for i, m in enumerate(layers) if isinstance(m, _AFFINE)]
    for i, j in itertools.pairwise(affine):
        between = layers[i + 1 : j]
        if _pair_ok(layers[i], layers[j], between):
            layers[i], layers[j], layers[i + 1 : j] = _shrink_pair(layers[i], layers[j], between)
    out = nn.Sequential(*layers)
    out.train(seq.training)
    return out
