"""Save and resume: a fresh process continues training to the identical result."""

import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import vdppl.numpyro as vd

from .conftest import SUBPROCESS_ENV

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    from numpyro.infer import SVI
    import vdppl.numpyro as vd

    mode, path = sys.argv[1], sys.argv[2]
    x = jax.random.normal(jax.random.key(1), (400, 16))
    y = (x[:, :10] > 0).argmax(-1)  # a learnable, fixed data set

    w1 = 0.25 * jax.random.normal(jax.random.key(2), (16, 32))
    w2 = 0.2 * jax.random.normal(jax.random.key(3), (32, 10))

    def model(x, y=None):
        h = jax.nn.relu(vd.nn.dense("fc1", x, 32, init=w1))
        logits = vd.nn.dense("fc2", h, 10, init=w2)
        with numpyro.plate("data", 400, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-2), vd.LocalReparamELBO())
    step = jax.jit(svi.update)
    state = svi.init(jax.random.key(123), x[:50], y[:50])  # the same start in both processes
    key, start = jax.random.key(0), 0
    if mode == "resume":
        ckpt = vd.load(path)
        state, key, start = ckpt["opt_state"], ckpt["extra"]["key"], ckpt["extra"]["step"]
    losses = []
    for i in range(start, 20):
        key, sub = jax.random.split(key)
        idx = jax.random.permutation(sub, 400)[:50]
        state, loss = step(state, x[idx], y[idx], kl_weight=jnp.float32(min(1.0, i / 10)))
        losses.append(float(loss))
        if mode == "save" and i == 9:
            vd.save(path, svi.get_params(state), state, key=key, step=i + 1)
    print(" ".join(repr(v) for v in losses))
    """
)


def run(mode, path):
    # both processes share a compilation cache, as a resumed run on the same machine would
    env = {
        **SUBPROCESS_ENV,
        "JAX_COMPILATION_CACHE_DIR": str(path.parent / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(path)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return [float(v) for v in out.stdout.split()]


def test_resume_in_a_fresh_process_is_identical(tmp_path):
    path = tmp_path / "ckpt.pkl"
    uninterrupted = run("save", path)
    resumed = run("resume", path)
    assert len(resumed) == 10
    assert resumed == uninterrupted[10:]


def test_round_trip_of_arrays_keys_and_extra(tmp_path):
    path = tmp_path / "ckpt.pkl"
    params = {"theta.w": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    vd.save(path, params, (jnp.int32(4), {"m": jnp.zeros(3)}), key=jax.random.key(7), epoch=3)
    ckpt = vd.load(path)
    assert jnp.array_equal(ckpt["params"]["theta.w"], params["theta.w"])
    assert ckpt["opt_state"][0] == 4 and ckpt["extra"]["epoch"] == 3
    key = ckpt["extra"]["key"]
    assert jnp.array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(7)))
    assert jnp.array_equal(jax.random.normal(key, (2,)), jax.random.normal(jax.random.key(7), (2,)))


def test_failed_save_keeps_the_good_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pkl"
    vd.save(path, {"a": jnp.ones(2)}, step=1)
    good = path.read_bytes()

    def broken(obj, fh, protocol=None):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pickle, "dump", broken)
    with pytest.raises(OSError, match="disk full"):
        vd.save(path, {"a": jnp.zeros(2)}, step=2)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pkl"]  # no temporary left behind


def test_no_silent_overwrite_and_bad_files(tmp_path):
    path = tmp_path / "ckpt.pkl"
    vd.save(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        vd.save(path, overwrite=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        vd.load(tmp_path / "missing.pkl")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"something": "else"}))
    with pytest.raises(ValueError, match="not a vdppl NumPyro checkpoint"):
        vd.load(tmp_path / "other.pkl")
    (tmp_path / "text.pkl").write_text("not a pickle")
    with pytest.raises(ValueError, match="not a vdppl NumPyro checkpoint"):
        vd.load(tmp_path / "text.pkl")
