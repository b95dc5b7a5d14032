"""The speed benchmark runs (smoke, a small MLP) and, with --run-slow, meets its target."""

import pytest

from vdppl.numpyro import bench


def test_speed_smoke():
    out = bench.speed(
        batch_size=8, repeats=1, steps=2, sizes=(12, 8, 3), warmup=1, styles=("plate",)
    )
    assert set(out["ms_per_step"]) == {"plain", "vdppl_plate"}
    assert all(ms > 0 for ms in out["ms_per_step"].values())
    assert all(s >= 0 for s in out["compile_s"].values())
    assert out["ratio_to_plain"]["plain"] == 1.0


@pytest.mark.slow
def test_speed_target(optimized_xla):
    # Target: vdppl's jitted step within 1.15x of hand-written JAX (median of 7 x 20 steps).
    out = bench.speed()
    assert out["ratio_to_plain"]["vdppl_plate"] <= 1.15, out
