"""Save and resume: a fresh process continues training to the identical result."""

import subprocess
import sys
import textwrap

import pyro
import pytest
import torch

import vdppl.pyro as vd

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
