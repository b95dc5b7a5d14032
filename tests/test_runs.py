"""Run directories (:mod:`vdppl.runs`): file modes, strict JSON, what ``--force`` deletes."""

import json
import os
import pathlib
import re
import stat

import numpy as np
import pytest

from vdppl import runs


def strict_json(path):
    """``json.loads`` that refuses ``NaN`` and ``Infinity`` (not JSON)."""

    def refuse(name):
        raise ValueError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def umask():
    """Set the process umask for one test; restored after."""
    before = os.umask(0o022)
    os.umask(before)
    yield lambda mask: os.umask(mask)
    os.umask(before)


class FakeIdata:
    """Stands in for ``arviz.InferenceData``: ``to_netcdf`` writes ``text``, or fails half way."""

    def __init__(self, text, fail=False):
        self.text, self.fail = text, fail

    def to_netcdf(self, path):
        with open(path, "w") as f:
            f.write(self.text[:3])
        if self.fail:
            raise OSError("disk full")
        with open(path, "a") as f:
            f.write(self.text[3:])


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077], ids=oct)
def test_atomic_writes_follow_the_umask(mask, umask, tmp_path):
    umask(mask)
    written = [
        runs.write_json(tmp_path / runs.CONFIG, {"a": 1}),
        runs.write_history(tmp_path / runs.HISTORY, [{"epoch": 1.0}]),
        runs.write_idata(tmp_path / runs.IDATA, FakeIdata("netcdf")),
    ]
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives
    for path in written:
        assert (
            stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode)
        ), path.name


def test_idata_is_written_atomically(tmp_path):
    path = tmp_path / runs.IDATA
    runs.write_idata(path, FakeIdata("old idata"))
    with pytest.raises(OSError, match="disk full"):
        runs.write_idata(path, FakeIdata("new idata", fail=True))
    assert path.read_text() == "old idata"  # untouched, and no temporary file left
    assert [p.name for p in tmp_path.iterdir()] == [runs.IDATA]


def test_write_idata_writes_real_netcdf(tmp_path):
    az = pytest.importorskip("arviz")
    idata = az.from_dict(posterior={"a": np.arange(6.0).reshape(1, 6)})
    runs.write_idata(tmp_path / runs.IDATA, idata)
    np.testing.assert_array_equal(
        az.from_netcdf(tmp_path / runs.IDATA).posterior["a"], idata.posterior["a"]
    )


def test_write_json_is_strict_json(tmp_path):
    data = {"nan": float("nan"), "inf": np.float32("inf"), "list": [np.nan, 1.5], "n": np.int64(3)}
    path = runs.write_json(tmp_path / "m.json", data)
    assert strict_json(path) == {"nan": None, "inf": None, "list": [None, 1.5], "n": 3}


def fill(path, names):
    path.mkdir(exist_ok=True)
    for name in names:
        (path / name).write_text(name)


STALE = [
    runs.CONFIG,
    runs.CHECKPOINT,
    runs.HISTORY,
    runs.METRICS,
    runs.IDATA,
    runs.REPORT,
    "evaluation.json",
    "evaluation-fashion-mnist.json",
    "ood-fashion-mnist.npz",
    "entropy-fashion-mnist.png",
    "ppc.png",
    "mask.png",
    ".checkpoint.k2j_x9a.tmp",  # an interrupted atomic write
]


def test_force_deletes_exactly_a_previous_runs_files(tmp_path):
    run = tmp_path / "run"
    fill(run, STALE)
    with pytest.raises(FileExistsError, match="--force"):
        runs.prepare_run_dir(run)
    assert sorted(p.name for p in runs.check_run_dir(run, force=True)) == sorted(STALE)
    assert len(list(run.iterdir())) == len(STALE)  # check_run_dir deletes nothing
    assert runs.prepare_run_dir(run, force=True) == run
    assert list(run.iterdir()) == []


@pytest.mark.parametrize(
    "names,message",
    [
        (["notes.txt"], "has no config.json, so it is not a vdppl run directory"),
        ([runs.METRICS, "thesis.tex"], "has no config.json"),
        (
            [runs.CONFIG, runs.METRICS, "notes.txt", "photo.png"],
            "did not write (notes.txt, photo.png)",
        ),
    ],
    ids=["foreign-dir", "no-config", "foreign-file-in-run"],
)
def test_force_never_deletes_other_files(names, message, tmp_path):
    run = tmp_path / "run"
    fill(run, names)
    with pytest.raises(FileExistsError, match=re.escape(message)):
        runs.prepare_run_dir(run, force=True)
    with pytest.raises(FileExistsError):
        runs.prepare_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == sorted(names)


def test_force_refuses_a_subdirectory_and_accepts_an_empty_directory(tmp_path):
    run = tmp_path / "run"
    fill(run, [runs.CONFIG])
    (run / "plots").mkdir()
    with pytest.raises(FileExistsError, match=r"did not write \(plots\)"):
        runs.prepare_run_dir(run, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runs.prepare_run_dir(empty) == empty  # empty: no --force needed
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        runs.prepare_run_dir(tmp_path / "file", force=True)


def test_checkpoints_follow_the_umask_too(umask, tmp_path):
    # Both backends' checkpoints and the dataset cache write through vdppl._io.atomic_write.
    from vdppl import _io

    umask(0o027)
    path = _io.atomic_write(
        tmp_path / "checkpoint", lambda tmp: pathlib.Path(tmp).write_bytes(b"x")
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
