"""Ctrl-C during fit / fit_many: stop at a chunk boundary with jg.FitInterrupted.

In fresh processes (``tests/helpers/interrupt_worker.py``), four at a time: SIGINT
before fit (jax and jaxguides imported), while fit traces, while XLA compiles
(on the compile thread), and mid-run, two of each; a second SIGINT ends the
process at once; a checkpoint written on the interrupt resumes to the params
of an uninterrupted run. In this process: the handler is put back after fit
(also after an error), and an interrupt is never swallowed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxguides as jg
from helpers import interrupt_worker as worker  # the model the subprocesses fit

WORKER = Path(worker.__file__)

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu"}
TIMEOUT = 240
CRASHES = (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, 139, 134)

# name -> (the marker line after which SIGINT is sent; signals; flags)
CASES = {
    "many": ("CHUNK 3", 1, ("--many",)),
    "startup-0": ("IMPORTED", 1, ("--wait", "60")),
    "startup-1": ("IMPORTED", 1, ("--wait", "60", "--checkpoint", "{dir}/startup.ckpt")),
    "tracing-0": ("INSTALLED", 1, ()),
    "tracing-1": ("INSTALLED", 1, ("--checkpoint", "{dir}/tracing.ckpt")),
    "compiling-0": ("COMPILING", 1, ()),
    "compiling-1": ("COMPILING", 1, ()),
    "running-0": ("CHUNK 3", 1, ("--checkpoint", "{dir}/running-0.ckpt")),
    "running-1": ("CHUNK 20", 1, ("--checkpoint", "{dir}/running-1.ckpt")),
    "twice": ("COMPILING", 2, ()),
}


_SLOTS = threading.Semaphore(4)  # processes at a time: more only slows each on a small machine


def _drive(name: str, d: Path, results: dict) -> None:
    with _SLOTS:
        _drive_one(name, d, results)


def _drive_one(name: str, d: Path, results: dict) -> None:
    when, signals, flags = CASES[name]
    cmd = [sys.executable, str(WORKER), str(d / f"{name}.npz"), *(f.format(dir=d) for f in flags)]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=ENV, cwd=str(WORKER.parents[2]), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == when:
                break
        sent = time.monotonic()
        for i in range(signals):
            if i:
                time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
        lines.extend(proc.stdout)
        proc.wait()
    finally:
        watchdog.cancel()
    results[name] = dict(rc=proc.returncode, out="".join(lines), after=time.monotonic() - sent,
                         total=time.monotonic() - started)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("interrupt")
    results: dict = {}
    threads = [threading.Thread(target=_drive, args=(name, d, results)) for name in CASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return d, results


def _interrupted(result: dict) -> dict[str, int]:
    """The worker's ``INTERRUPTED step=.. state_step=.. losses=..`` line, parsed."""
    assert result["rc"] not in CRASHES, result["out"]
    assert "DONE" not in result["out"], "the interrupt was swallowed:\n" + result["out"]
    line = [x for x in result["out"].splitlines() if x.startswith("INTERRUPTED")]
    assert result["rc"] == 0 and len(line) == 1, result["out"]
    return {k: int(v) for k, v in (part.split("=") for part in line[0].split()[1:])}


def _params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k.startswith("param:")}


@pytest.mark.parametrize("i", [0, 1])
def test_sigint_before_fit_is_a_plain_keyboard_interrupt(runs, i):
    """Importing jaxguides and making a guide leave Python's SIGINT handling alone.

    The signal comes after ``import jaxguides`` and before ``fit``: a plain
    KeyboardInterrupt, no crash, no fit, no checkpoint. (A SIGINT while Python
    is still importing jaxlib can abort inside jaxlib's own start-up, before any
    jaxguides code runs, so the worker signals only once imports are done.)"""
    d, results = runs
    out = results[f"startup-{i}"]["out"]
    assert results[f"startup-{i}"]["rc"] not in CRASHES, out
    assert "KeyboardInterrupt" in out and "INSTALLED" not in out and "DONE" not in out, out
    assert "jg.FitInterrupted" not in out and not (d / "startup.ckpt").exists(), out


@pytest.mark.parametrize("name", ["tracing-0", "tracing-1", "compiling-0", "compiling-1"])
def test_sigint_while_tracing_or_compiling_stops_before_the_first_step(runs, name):
    d, results = runs
    assert _interrupted(results[name]) == {"step": 0, "state_step": 0, "losses": 0}
    if name == "tracing-1":  # the checkpoint holds the initial state, and resumes from it
        assert int(jg.load_checkpoint(d / "tracing.ckpt")["state/step"]) == 0


@pytest.mark.parametrize("name", ["running-0", "running-1", "many"])
def test_sigint_mid_run_stops_at_a_chunk_boundary(runs, name):
    d, results = runs
    got = _interrupted(results[name])
    marker = int(CASES[name][0].split()[1])
    assert got["step"] % worker.CHUNK == 0 and marker * worker.CHUNK <= got["step"] < 1500, got
    assert got["state_step"] == got["step"] == got["losses"], got
    if name != "many":  # the checkpoint holds the state the error carries
        payload = jg.load_checkpoint(d / f"{name}.ckpt")
        assert int(payload["state/step"]) == got["step"]
        saved = [x for path, x in payload.items() if path.startswith("state/params/")]  # in leaf order
        for a, b in zip(saved, _params(d / f"{name}.npz").values()):
            np.testing.assert_array_equal(a, b)


def test_second_sigint_ends_the_process_at_once(runs):
    result = runs[1]["twice"]
    assert result["rc"] == -signal.SIGINT, result["out"]
    assert "INTERRUPTED" not in result["out"] and "DONE" not in result["out"]


def test_checkpoint_written_on_interrupt_resumes_to_the_uninterrupted_params(runs, tmp_path):
    d, _ = runs
    kw = worker.fit_args(1500)
    guide = jg.AutoNormal(worker.model)

    def fit(**options):
        return jg.fit(worker.model, guide, kw["optimizer"], kw["rng_key"], kw["num_steps"], worker.data(),
                      progress_bar=False, chunk_size=worker.CHUNK, **options)  # fmt: skip

    full = fit()
    for name in ("running-0", "running-1", "tracing-1"):
        path = tmp_path / f"{name}.ckpt"
        shutil.copytree(d / (name.replace("tracing-1", "tracing") + ".ckpt"), path)  # a checkpoint directory
        resumed = fit(checkpoint=path)
        np.testing.assert_array_equal(resumed.losses, full.losses)
        for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
            np.testing.assert_array_equal(a, b)


# ---- in this process ----------------------------------------------------------------------------
def _small_fit(**options):
    import numpyro
    import numpyro.distributions as dist
    import optax

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    return jg.fit(model, jg.AutoNormal(model), optax.adam(0.05), jax.random.PRNGKey(0), 200, np.ones(3),
                  progress_bar=False, chunk_size=20, **options)  # fmt: skip


def _sigint_after_chunk(loop_io, k, then=None):
    chunks = []

    def read(report):
        chunks.append(1)
        if len(chunks) == k:
            signal.raise_signal(signal.SIGINT)  # handled by fit's handler: a flag, no exception here
            assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # a second one would end the process
            if then is not None:
                then()
        return real(report)

    real = loop_io(read_report=read).read_report


def test_in_process_interrupt_and_handler_restored(loop_io, tmp_path):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    full = _small_fit()
    _sigint_after_chunk(loop_io, 3)
    with pytest.raises(jg.FitInterrupted) as info:
        _small_fit(checkpoint=tmp_path / "run.ckpt")
    err = info.value
    assert isinstance(err, KeyboardInterrupt) and err.step == 60 and int(err.state.step) == 60
    np.testing.assert_array_equal(err.losses, full.losses[:60])
    assert err.checkpoint == str(tmp_path / "run.ckpt") and "step 60" in str(err)
    assert int(jg.load_checkpoint(tmp_path / "run.ckpt")["state/step"]) == 60
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_interrupt_is_not_swallowed_by_an_error(loop_io):
    """Ctrl-C, then the fit fails before its next look: a KeyboardInterrupt from the failure."""

    def fail():
        raise RuntimeError("boom")

    _sigint_after_chunk(loop_io, 2, then=fail)
    with pytest.raises(KeyboardInterrupt) as info:
        _small_fit()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupt_after_the_last_look_is_not_swallowed(loop_io, tmp_path):
    """Ctrl-C while the final checkpoint is written, after the loop's last look:
    the finished result comes as FitInterrupted."""

    def save_then_sigint(*args):
        real.save(*args)
        signal.raise_signal(signal.SIGINT)

    real = loop_io(save=save_then_sigint)  # without checkpoint_every: only the final one
    with pytest.raises(jg.FitInterrupted) as info:
        _small_fit(checkpoint=tmp_path / "run.ckpt")
    assert info.value.step == 200 and info.value.losses.shape == (200,)
    assert int(jg.load_checkpoint(tmp_path / "run.ckpt")["state/step"]) == 200
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_handler_outside_the_main_thread():
    seen = []

    def run():
        seen.append(signal.getsignal(signal.SIGINT))
        seen.append(_small_fit().losses.shape)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler, (200,)]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
