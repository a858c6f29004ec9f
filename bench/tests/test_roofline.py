"""The roofline benchmark's byte counts (``bench/roofline.py``), on a small K."""

import jax
import numpy as np
import pytest

from bench import impls, roofline
from bench.models import HIER

K = 1000


@pytest.fixture(scope="module")
def built():
    data = jax.block_until_ready(HIER.data({"K": K}))
    return {name: impls.build(name, HIER, {"K": K}, "delta", data) for name in ("floor", "jg_scan")}


def test_minimum_bytes_is_the_state_read_and_written_once_and_the_data_read_once(built):
    # AutoDelta on mu, tau, theta[K]: params K + 2 floats; Adam: the same twice and an int32 count
    state_bytes = 4 * (3 * (K + 2) + 1)
    data_bytes = 4 * 2 * K  # y and sigma
    for name in ("floor", "jg_scan"):
        _, _, state = roofline.one_step(built[name])
        assert roofline.minimum_bytes(state, built[name].arrays) == 2 * state_bytes + data_bytes


def test_a_compiled_step_accesses_at_least_the_minimum(built):
    for name in ("floor", "jg_scan"):
        fn, args, state = roofline.one_step(built[name])
        minimum = roofline.minimum_bytes(state, built[name].arrays)
        counted = roofline.xla_bytes(fn, *args)
        assert np.isfinite(counted) and counted >= minimum


def test_the_report_has_a_row_per_implementation_with_its_fractions(capsys):
    roofline.main(["--K", "200", "--guides", "delta", "--steps", "2", "--runs", "1", "--peak-gbs", "100"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 200 |")]
    assert [r.split("|")[3].strip() for r in rows] == list(roofline.IMPLEMENTATIONS)
    assert "Peak: 100 GB/s (given" in out
