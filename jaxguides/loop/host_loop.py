"""The host loop that ``fit`` and ``fit_many`` share: compiled chunks, one after another.

Between chunks the host reads the chunk's report (one transfer), files its
losses, moves the bar, saves a checkpoint when one is due, stops on Ctrl-C
(``loop/interrupt.py``) or on a non-finite step, and sizes the next chunk
(``loop/pacing.py``). One fit and K ``vmap``-ped fits differ only in the
leading axes of ``losses`` and ``skipped`` (``[num_steps]`` / ``[K, num_steps]``).

:data:`IO` is the loop's seam: what it calls outside itself (run a chunk, read
its report, save, compile ahead). Tests observe or fail those calls by
replacing it (``dataclasses.replace(host_loop.IO, read_report=spy)``) rather
than patching module names.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxguides._errors import FitInterrupted, NonFiniteLossError
from jaxguides.loop.checkpoint import Checkpointer, write_fit_checkpoint
from jaxguides.loop.chunks import chunk_end, read_report, run_chunk, run_chunk_many
from jaxguides.loop.compile import compile_ahead
from jaxguides.loop.interrupt import Interrupts
from jaxguides.loop.pacing import Pacer
from jaxguides.loop.progress import nanmean
from jaxguides.loop.run_identity import Record
from jaxguides.parallel.sharding import PlateLayout
from jaxguides.svi.state import SVIState

__all__ = ["IO", "LoopIO", "Ran", "Saver", "run_chunks"]


@dataclasses.dataclass(frozen=True)
class LoopIO:
    """What the loop calls outside itself (see module doc)."""

    run_chunk: Callable[..., Any] = run_chunk  # fit's jitted chunk: (state, end, dynamic, **static) -> Chunk
    run_chunk_many: Callable[..., Any] = run_chunk_many  # fit_many's (vmap-ped)
    read_report: Callable[..., Any] = read_report  # report -> (losses, bad_step, skipped), on the host
    save: Callable[..., None] = write_fit_checkpoint  # (checkpointer, state, losses, skipped, run record)
    compile_ahead: Callable[..., Any] = compile_ahead  # fit's chunk from init's shapes, on a compile thread


IO = LoopIO()


@dataclasses.dataclass
class Saver:
    """``fit``'s checkpoints: one every ``every`` steps (``None``: only at the end)."""

    checkpoint: Checkpointer
    every: int | None
    run_id: Record | None
    last_saved: int
    io: LoopIO

    def limit(self, stop: int) -> int:
        """``stop``, or the next step a checkpoint is due at, if sooner."""
        return min(stop, self.last_saved + self.every) if self.every else stop

    def save(self, state: SVIState, losses: np.ndarray, skipped: np.ndarray, step: int) -> None:
        self.io.save(self.checkpoint, state, losses[:step], int(skipped), self.run_id)
        self.last_saved = step

    def save_if_due(self, state: SVIState, losses: np.ndarray, skipped: np.ndarray, step: int) -> None:
        if self.every and step - self.last_saved >= self.every:
            self.save(state, losses, skipped, step)

    def save_unless_saved(self, state: SVIState, losses: np.ndarray, skipped: np.ndarray, step: int) -> None:
        """At the end or on Ctrl-C: a save, unless step ``step`` is saved already."""
        if self.last_saved != step or not self.checkpoint.exists():
            self.save(state, losses, skipped, step)


@dataclasses.dataclass(frozen=True)
class Ran:
    """Where the loop ended: ``step == num_steps`` (it only returns then)."""

    state: SVIState
    losses: np.ndarray  # [..., num_steps]
    skipped: np.ndarray  # [...]
    step: int
    rate: float | None  # seconds per step of the last long chunk (pacing's estimate)


def run_chunks(
    run: Callable[[SVIState, Any, list[Any]], Any],
    state: SVIState,
    dynamic: list[Any],
    losses: np.ndarray,
    skipped: np.ndarray,
    step: int,
    *,
    pacer: Pacer,
    bar: Any,
    label: str,
    interrupts: Interrupts,
    io: LoopIO,
    layout: PlateLayout | None = None,
    saver: Saver | None = None,
    show_loss: bool = True,
) -> Ran:
    """Run chunks from ``step`` to ``losses.shape[-1]`` steps.

    Args:
        run: a chunk, ``run(state, end, dynamic) -> Chunk`` (up to ``end``).
        losses: ``float32[..., num_steps]``, filled up to ``step`` (a resumed fit).
        skipped: ``int64[...]``, steps skipped so far.
        label: the bar's description while steps run (``fit``, ``fit x3``).
        show_loss: put the running loss on the bar (``False``: no bar to show it).

    Raises:
        FitInterrupted: Ctrl-C, at the chunk boundary after it (saved first).
        NonFiniteLossError: a chunk stopped at a non-finite step (saved first).
    """
    num_steps = losses.shape[-1]
    what = "mean of" if losses.ndim == 1 else "mean over fits,"
    done = 0
    while step < num_steps:
        if interrupts.requested():  # Ctrl-C: stop here, with the state of the last chunk
            bar.set_description(f"{label}: interrupted", refresh=False)
            if saver is not None:
                saver.save_unless_saved(state, losses, skipped, step)
            path = None if saver is None else os.fspath(saver.checkpoint)
            raise FitInterrupted(step, state.params, state, losses[..., :step].copy(), path)
        stop = min(step + pacer.steps, num_steps)
        stop = stop if saver is None else saver.limit(stop)
        started = time.perf_counter()
        out = run(state, chunk_end(stop, layout), dynamic)
        chunk_losses, bad_step, chunk_skipped = io.read_report(out.report)  # one sync, one transfer
        bad = int(np.max(bad_step))  # -1: none (K fits skip, never stop)
        done = (bad if bad >= 0 else stop) - step
        pacer.update(done, time.perf_counter() - started)
        losses[..., step : step + done] = chunk_losses[..., :done]
        state, step = out.state, step + done
        skipped = skipped + chunk_skipped
        if bad >= 0:
            if saver is not None:
                saver.save(state, losses, skipped, step)
            raise NonFiniteLossError(bad, state.params, state, losses[..., :bad].copy())
        if saver is not None:
            saver.save_if_due(state, losses, skipped, step)
        if done and show_loss:  # no refresh of its own: update() redraws at most every 0.1 s
            mean = nanmean(losses[..., step - done : step])
            bar.set_postfix_str(f"loss ({what} last chunk)={mean:.4g}", refresh=False)
        bar.update(done)
    if done and show_loss:  # the last line: what the result holds
        last = f"loss ({what} last {done} steps)={nanmean(losses[..., step - done : step]):.4g}"
        bar.set_postfix_str(f"{last}, last={nanmean(losses[..., step - 1]):.4g}", refresh=False)
    return Ran(state, losses, skipped, step, pacer.rate)
