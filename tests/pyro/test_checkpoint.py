"""Save and resume: a fresh process continues training to the identical result."""

import os
import stat
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from torch import nn

import vdppl.pyro as vd
from vdppl._io import atomic_write

SCRIPT = textwrap.dedent(
    """
    import sys, torch, pyro, pyro.distributions as dist
    from pyro.infer import SVI
    import vdppl.pyro as vd
    from vdppl.datasets import load_digits

    mode, path = sys.argv[1], sys.argv[2]
    data = load_digits()
    x, y = torch.as_tensor(data.x_train[:400]), torch.as_tensor(data.y_train[:400])
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    torch.manual_seed(123)  # the same initial network in both processes
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = bnn(x)
        with pyro.plate("data", 400, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)
    optim = pyro.optim.Adam({"lr": 1e-2})
    svi = SVI(model, guide, optim, vd.LocalReparamELBO())
    pyro.set_rng_seed(0)
    start = 0
    if mode == "resume":
        start = vd.load(path, optimizer=optim)["step"]
    losses = []
    for step in range(start, 20):
        idx = torch.randperm(400)[:50]
        losses.append(svi.step(x[idx], y[idx]))
        if mode == "save" and step == 9:
            vd.save(path, optimizer=optim, step=step + 1)
    print(" ".join(repr(v) for v in losses))
    """
)


def run(mode, path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(path)], capture_output=True, text=True, check=True
    )
    return [float(v) for v in out.stdout.split()]


def test_resume_in_a_fresh_process_is_identical(tmp_path):
    path = tmp_path / "ckpt.pt"
    uninterrupted = run("save", path)
    resumed = run("resume", path)
    assert len(resumed) == 10
    assert resumed == uninterrupted[10:]


def test_failed_save_keeps_the_good_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    pyro.param("a", torch.ones(2))
    vd.save(path, step=1)
    good = path.read_bytes()

    def broken(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        vd.save(path, step=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_no_silent_overwrite_and_bad_files(tmp_path):
    path = tmp_path / "ckpt.pt"
    vd.save(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        vd.save(path, overwrite=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        vd.load(tmp_path / "missing.pt")
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a vdppl Pyro checkpoint"):
        vd.load(tmp_path / "other.pt")


def classifier(net, n=64):
    """``net`` bayesianized, a classification model over it, its guide, SVI and optimizer."""
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = pyro.deterministic("logits", bnn(x))
        with pyro.plate("data", n, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)
    optim = pyro.optim.Adam({"lr": 1e-2})
    return bnn, model, guide, optim, SVI(model, guide, optim, vd.LocalReparamELBO())


def batchnorm_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_resume_restores_batchnorm_statistics(tmp_path):
    path = tmp_path / "ckpt.pt"
    x, y = torch.randn(64, 4) * 3 + 1, torch.randint(0, 3, (64,))
    bnn, model, guide, optim, svi = classifier(batchnorm_net(0))
    for _ in range(5):
        svi.step(x, y)
    vd.save(path, module=bnn, optimizer=optim)
    expected = vd.predict(model, guide, x, module=bnn)["logits"]

    pyro.clear_param_store()
    bnn2, model2, guide2, optim2, _ = classifier(batchnorm_net(1))  # other weights, fresh stats
    # Set the guide up first: its set-up runs the model once, and BatchNorm in training
    # mode would update the statistics that load() restores.
    guide2(x, y)
    vd.load(path, optimizer=optim2)  # without the module: its statistics are its own
    assert not torch.equal(vd.predict(model2, guide2, x, module=bnn2)["logits"], expected)
    vd.load(path, module=bnn2, optimizer=optim2)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bnn2[1], name), getattr(bnn[1], name)), name
    assert int(bnn2[1].num_batches_tracked) == 6  # the guide's set-up and five steps
    assert torch.equal(vd.predict(model2, guide2, x, module=bnn2)["logits"], expected)


def test_module_buffers_must_match(tmp_path):
    path = tmp_path / "ckpt.pt"
    bnn = vd.bayesianize(batchnorm_net(0))
    vd.save(path, module=bnn)
    with pytest.raises(ValueError, match=r"does not match the one saved.*only in the module"):
        vd.load(path, module=vd.bayesianize(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8),
                                                          nn.BatchNorm1d(8), nn.Linear(8, 3))))  # fmt: skip
    wider = nn.Sequential(nn.Linear(4, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 3))
    with pytest.raises(ValueError, match="buffer '0.weight_init' has shape"):
        vd.load(path, module=vd.bayesianize(wider))
    vd.save(path)
    with pytest.raises(ValueError, match="saved without module buffers"):
        vd.load(path, module=bnn)
    with pytest.raises(ValueError, match="saved without optimizer state"):
        vd.load(path, optimizer=pyro.optim.Adam({}))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        vd.save(path, module={"running_mean": torch.zeros(3)})


def dropout_net():
    torch.manual_seed(5)  # the same initial network every time
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def test_resume_into_a_fresh_guide_with_dropout_in_the_model(tmp_path):
    # nn.Dropout draws from torch's generator whenever the model runs, also when a guide
    # runs it once to set itself up; that set-up must not shift the resumed random stream.
    path = tmp_path / "ckpt.pt"
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    bnn, _, _, optim, svi = classifier(dropout_net())
    for _ in range(3):
        svi.step(x, y)
    vd.save(path, module=bnn, optimizer=optim)
    expected = [svi.step(x, y) for _ in range(3)]

    pyro.clear_param_store()
    bnn, _, _, optim, svi = classifier(dropout_net())
    vd.load(path, module=bnn, optimizer=optim)
    resumed = [svi.step(x, y) for _ in range(3)]  # the guide sets itself up in the first
    assert resumed == expected


def test_atomic_write_flushes_the_file_before_the_rename(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def record_replace(src, dst):
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    atomic_write(tmp_path / "out.txt", lambda tmp: open(tmp, "w").write("done"))
    assert events == ["fsync file", "replace", "fsync dir"]
    assert (tmp_path / "out.txt").read_text() == "done"


def test_summaries_after_load_describe_the_loaded_parameters(tmp_path):
    # A PyroModule outside a call reads its own copy of a parameter; the guide's summaries
    # (median, log_alpha, mask, and so predict's "mean" mode) must read the restored store.
    path = tmp_path / "ckpt.pt"
    bnn, model, guide, _, _ = classifier(dropout_net())
    guide(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    saved = guide.median()["0.weight"] + 1.0
    with torch.no_grad():
        pyro.param("AutoVariationalDropout.theta.0.weight").copy_(saved)
    vd.save(path)
    with torch.no_grad():
        pyro.param("AutoVariationalDropout.theta.0.weight").zero_()
    vd.load(path)
    assert torch.equal(guide.median()["0.weight"], saved)
