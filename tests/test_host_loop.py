"""The host loop shared by fit and fit_many (``loop/host_loop.py``), on fake chunks.

No JAX here: a chunk is a Python function of ``(state, end)``, so what the loop
does between chunks (where it stops, what it files, saves, shows and raises)
is checked step by step, for one fit and for K fits alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import pytest

import jaxguides as jg
from jaxguides.loop import host_loop
from jaxguides.loop.interrupt import Interrupts
from jaxguides.loop.pacing import Pacer


class State(NamedTuple):
    step: int
    params: Any


class Chunk(NamedTuple):
    state: State
    report: tuple[np.ndarray, np.ndarray, np.ndarray]


def loss_at(step: np.ndarray) -> np.ndarray:
    return 100.0 - step  # a recognisable loss per step


def fake_run(k: int | None = None, nan_from: int | None = None, calls: list | None = None):
    """A chunk of steps ``state.step .. end``: the loss of step s is ``100 - s``;
    from ``nan_from`` on a step is non-finite and the chunk stops there."""

    def run(state: State, end: Any, dynamic: list) -> Chunk:
        start, end = state.step, int(end)
        stop = end if nan_from is None or nan_from >= end else max(start, nan_from)
        losses = np.full(16, np.nan, np.float32)
        losses[: stop - start] = loss_at(np.arange(start, stop))
        bad = np.int32(-1 if stop == end else stop)
        if calls is not None:
            calls.append((start, end))
        report = (losses, bad, np.int32(0))
        if k is not None:  # K fits: the same numbers for each, on a leading axis
            report = (np.tile(losses, (k, 1)), np.full(k, bad), np.zeros(k, np.int32))
        return Chunk(State(stop, {"x": stop}), report)

    return run


class Bar:
    """The calls the loop makes on its bar, recorded."""

    def __init__(self):
        self.n, self.postfix, self.description = 0, [], []

    def update(self, n):
        self.n += n

    def set_postfix_str(self, s="", refresh=True):
        self.postfix.append(s)

    def set_description(self, desc=None, refresh=True):
        self.description.append(desc)


@dataclasses.dataclass
class Checkpoint:
    """A stand-in for the Orbax checkpointer: a path, and whether a step is on disk."""

    saved: list

    def exists(self) -> bool:
        return bool(self.saved)

    def __fspath__(self) -> str:
        return "run.ckpt"


IO = dataclasses.replace(host_loop.IO, read_report=lambda report: report)


def _run(num_steps, run, *, k=None, chunk=7, every=None, interrupts=None, step=0, saved=None):
    shape = (num_steps,) if k is None else (k, num_steps)
    losses, skipped = np.full(shape, np.nan, np.float32), np.zeros(shape[:-1], np.int64)
    saved = [] if saved is None else saved
    io = dataclasses.replace(
        IO, save=lambda ckpt, state, losses, skipped, run_id: saved.append((state.step, len(losses)))
    )
    saver = host_loop.Saver(Checkpoint(saved), every, None, step, io) if every is not None else None
    bar = Bar()
    ran = host_loop.run_chunks(
        run, State(step, {"x": step}), [], losses, skipped, step, pacer=Pacer(num_steps, chunk, chunk), bar=bar,
        label="fit", interrupts=interrupts or Interrupts(), io=io, saver=saver,
    )  # fmt: skip
    return ran, saved, bar


def test_chunks_run_to_the_end_filing_every_loss():
    calls = []
    ran, _, bar = _run(25, fake_run(calls=calls))
    assert calls == [(0, 7), (7, 14), (14, 21), (21, 25)]
    np.testing.assert_array_equal(ran.losses, loss_at(np.arange(25)))
    assert ran.step == 25 and ran.state.step == 25 and bar.n == 25
    assert bar.postfix[-1] == f"loss (mean of last 4 steps)={np.mean(loss_at(np.arange(21, 25))):.4g}, last=76"


def test_a_resumed_run_starts_at_its_step():
    calls = []
    ran, _, _ = _run(25, fake_run(calls=calls), step=18)
    assert calls == [(18, 25)] and np.isnan(ran.losses[:18]).all()
    np.testing.assert_array_equal(ran.losses[18:], loss_at(np.arange(18, 25)))


def test_chunks_end_where_a_checkpoint_is_due():
    calls = []
    _, saved, _ = _run(25, fake_run(calls=calls), every=10)
    assert calls == [(0, 7), (7, 10), (10, 17), (17, 20), (20, 25)]
    assert saved == [(10, 10), (20, 20)]  # the last one is the caller's (save_unless_saved), after the loop


def test_k_fits_fill_a_leading_axis():
    ran, _, bar = _run(25, fake_run(k=3), k=3)
    np.testing.assert_array_equal(ran.losses, np.tile(loss_at(np.arange(25)), (3, 1)))
    assert ran.skipped.shape == (3,)
    assert bar.postfix[-1].startswith("loss (mean over fits, last 4 steps)=")


def test_a_nonfinite_step_saves_then_raises_with_the_losses_before_it():
    saved: list = []
    with pytest.raises(jg.NonFiniteLossError) as info:
        _run(25, fake_run(nan_from=12), every=100, saved=saved)
    err = info.value
    assert err.step == 12 and err.state.step == 12 and saved == [(12, 12)]
    np.testing.assert_array_equal(err.losses, loss_at(np.arange(12)))


def test_ctrl_c_stops_at_the_next_chunk_boundary_and_saves():
    interrupts, calls = Interrupts(), []
    run = fake_run(calls=calls)

    def run_then_ctrl_c(state, end, dynamic):
        out = run(state, end, dynamic)
        if len(calls) == 2:
            interrupts.pending = True  # what the SIGINT handler sets
        return out

    saved: list = []
    with pytest.raises(jg.FitInterrupted) as info:
        _run(25, run_then_ctrl_c, every=10, interrupts=interrupts, saved=saved)
    err = info.value
    assert len(calls) == 2 and err.step == 10 and err.checkpoint == "run.ckpt"
    assert saved == [(10, 10)]  # due at step 10, and not written twice on the interrupt
    np.testing.assert_array_equal(err.losses, loss_at(np.arange(10)))
