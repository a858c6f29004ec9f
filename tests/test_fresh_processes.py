"""Fits in fresh processes (``tests/helpers/fit_worker.py``): faults and determinism.

A fit killed with SIGKILL half-way through writing a checkpoint keeps the
previous checkpoint intact, resumes from it and ends bit-equal to an
uninterrupted run; a corrupted or truncated checkpoint is refused and left as
it was; two runs with the same key are byte-identical; float64 mode end to end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxguides as jg
from helpers import fit_worker as _fit_worker  # the model the subprocesses fit

KEY = jax.random.PRNGKey(0)
WORKER = Path(_fit_worker.__file__)


ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
TIMEOUT = 300


def _launch(out: Path, *flags: str, env=None, stdout=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), *flags],
        env=env or ENV,
        cwd=str(WORKER.parents[2]),
        stdout=stdout or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(proc: subprocess.Popen, what: str) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"{what} failed:\n{out}"
    return out


def _wait_for_line(proc: subprocess.Popen, marker: str) -> list[str]:
    """Read ``proc``'s output until a line starts with ``marker`` (kill it after TIMEOUT)."""
    lines, watchdog = [], threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(marker):
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"never saw {marker!r}:\n{''.join(lines)}")


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four fresh processes at once: two identical runs (a, b), one in float64, and one
    killed with SIGKILL half-way through its 3rd (asynchronous) checkpoint save (step 150), which
    is then re-run with the same command line to the end."""
    d = tmp_path_factory.mktemp("runs")
    killed_dir = d / "killed"
    killed_dir.mkdir()
    ckpt = killed_dir / "run.ckpt"
    procs = {
        "killed": _launch(
            d / "killed.npz", "--checkpoint", str(ckpt), env={**ENV, "JAXGUIDES_TEST_BLOCK_AT_SAVE": "3"}
        ),
        "a": _launch(d / "a.npz", "--checkpoint", str(d / "a.ckpt")),
        "b": _launch(d / "b.npz", "--checkpoint", str(d / "b.ckpt")),
        "x64": _launch(d / "x64.npz", "--x64"),
    }
    try:
        _wait_for_line(procs["killed"], "MIDWRITE")
        os.kill(procs["killed"].pid, signal.SIGKILL)
        procs["killed"].wait(timeout=TIMEOUT)
        after_kill = sorted(os.listdir(ckpt))
        shutil.copytree(ckpt, d / "after_kill")
        resumed = _launch(d / "killed.npz", "--checkpoint", str(ckpt))
        outputs = {name: _wait(p, name) for name, p in procs.items() if name != "killed"}
        outputs["resumed"] = _wait(resumed, "the re-run of the killed command")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return {
        "dir": d,
        "ckpt": ckpt,
        "killed_returncode": procs["killed"].returncode,
        "after_kill": after_kill,
        "a": _load(d / "a.npz"),
        "b": _load(d / "b.npz"),
        "x64": _load(d / "x64.npz"),
        "resumed": _load(d / "killed.npz"),
        "outputs": outputs,
    }


def _assert_bit_equal(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> None:
    assert sorted(x) == sorted(y)
    for k, value in x.items():
        assert value.dtype == y[k].dtype and value.shape == y[k].shape, k
        assert value.tobytes() == y[k].tobytes(), f"{k} differs"


def test_same_key_gives_byte_identical_runs_in_fresh_processes(runs):
    a, b = runs["a"], runs["b"]
    assert {k.split(":")[0] for k in a} == {"loss", "param", "sample", "median", "numpyro_median"}
    _assert_bit_equal(a, b)
    assert a["loss"].shape == (_fit_worker.STEPS,) and np.all(np.isfinite(a["loss"]))
    assert np.mean(a["loss"][-50:]) < np.mean(a["loss"][:50])  # it fitted something
    assert a["sample:z"].shape == (5, _fit_worker.N)
    assert len({a["sample:mu"][i].tobytes() for i in range(5)}) == 5  # real draws, not a constant
    for name in ("mu", "sigma", "p", "z"):  # and NumPyro reads the exported params alike
        np.testing.assert_allclose(a[f"median:{name}"], a[f"numpyro_median:{name}"], rtol=1e-6, atol=1e-7)


def test_sigkill_mid_write_keeps_the_previous_checkpoint(runs):
    assert runs["killed_returncode"] == -signal.SIGKILL
    after = runs["after_kill"]
    # the kill hit the step-150 save in its temporary directory, not committed ...
    temps = [n for n in after if not n.isdigit()]
    assert sorted(int(n) for n in after if n.isdigit()) == [50, 100], after  # keep-last-2
    assert len(temps) == 1 and temps[0].startswith("150.orbax-checkpoint-tmp"), after
    tmp = runs["dir"] / "after_kill" / temps[0]
    assert not (tmp / "meta" / "metadata").exists() and not (tmp / "arrays").exists()  # its items uncommitted too
    # ... while the newest committed checkpoint is the complete step-100 one
    payload = jg.load_checkpoint(runs["dir"] / "after_kill")
    assert int(payload["state/step"]) == 2 * _fit_worker.EVERY
    # and it is the uninterrupted run's first 100 steps, bit for bit
    np.testing.assert_array_equal(payload["losses"], runs["a"]["loss"][:100])


def test_killed_fit_resumes_bit_for_bit(runs):
    """Re-running the killed command resumes from step 100 and ends with params,
    losses, draws and medians byte-identical to the uninterrupted run."""
    _assert_bit_equal(runs["resumed"], runs["a"])
    # it resumed from step 100: two checkpoint writes (steps 50 and 100) fewer than
    # the run from scratch
    writes = {k: int(re.search(r"CHECKPOINT_WRITES (\d+)", runs["outputs"][k]).group(1)) for k in ("a", "resumed")}
    assert writes["a"] >= _fit_worker.STEPS // _fit_worker.EVERY
    assert writes["resumed"] == writes["a"] - 2, writes
    final = jg.load_checkpoint(runs["ckpt"])
    assert int(final["state/step"]) == _fit_worker.STEPS
    np.testing.assert_array_equal(final["losses"], runs["a"]["loss"])
    assert sorted(os.listdir(runs["ckpt"])) == ["250", "300"]  # the killed save's leftovers cleaned up


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_is_refused_and_left_as_it_was(runs, damage, tmp_path):
    path = tmp_path / "damaged.ckpt"
    shutil.copytree(runs["dir"] / "after_kill", path)
    data = path / "100" / "arrays" / "d"
    target = data / sorted(os.listdir(data))[0]
    raw = bytearray(target.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x10
    else:
        raw = raw[: len(raw) * 2 // 3]
    target.write_bytes(bytes(raw))
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(jg.CheckpointError) as info:
        jg.load_checkpoint(path)
    assert str(path / "100") in str(info.value) and info.value.path == str(path / "100")
    assert "checksum" in str(info.value) or "cannot be read" in str(info.value)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_float64_end_to_end(runs):
    x64 = runs["x64"]
    for key, value in x64.items():
        if key != "loss":
            assert value.dtype == np.float64, key
    assert np.all(np.isfinite(x64["loss"])) and np.mean(x64["loss"][-50:]) < np.mean(x64["loss"][:50])
    for name in ("mu", "sigma", "p", "z"):
        np.testing.assert_allclose(x64[f"median:{name}"], x64[f"numpyro_median:{name}"], rtol=1e-12, atol=1e-14)
    # the same fit, to float32 precision and Monte Carlo noise
    for name in ("mu", "sigma", "p"):
        np.testing.assert_allclose(x64[f"median:{name}"], runs["a"][f"median:{name}"], atol=0.2)
