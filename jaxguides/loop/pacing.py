"""How many steps the next compiled chunk runs (the count is a runtime argument)."""

from __future__ import annotations

import jax

__all__ = ["CHUNK_SECONDS", "FIRST_CHUNK", "MAX_CHUNK", "Pacer", "chunk_length", "default_chunk"]


MAX_CHUNK = 4096  # steps one default chunk can hold (its loss buffer): one compilation for every fit length
FIRST_CHUNK = 64  # steps of the first default chunk, so the bar moves soon
CHUNK_SECONDS = 0.25  # default chunks grow (or shrink) to about this long


def chunk_length(num_steps: int, chunk_size: int | None) -> int:
    """Steps a compiled chunk can hold (static: it keys the compilation)."""
    if chunk_size is None:
        return MAX_CHUNK
    return max(1, min(chunk_size, max(num_steps, 1)))


def default_chunk(num_steps: int) -> int:
    """About 2% of the run, a power of two in [64, 1024]."""
    return min(max(64, 1 << (max(num_steps // 50, 1) - 1).bit_length()), 1024)


class Pacer:
    """Steps for the next chunk. With ``chunk_size`` given, always that many.
    By default chunks start at 64 steps and then aim at ``CHUNK_SECONDS`` of
    compute each (at most ``MAX_CHUNK``), so a step of a few microseconds is
    not dominated by the chunks' fixed cost (dispatch, the loop's entry, the
    host sync) and the bar still moves a few times
    a second. The first chunk's time includes that fixed cost, so the estimate
    errs towards shorter chunks. A fit of a chunk that an earlier fit has run
    (same model, guide, optimizer, shapes: ``rate``, its seconds per step)
    starts at that rate's length instead, with no 64-step probe. The count is
    a runtime argument of the compiled chunk, not part of its compilation;
    results do not depend on it. Across processes (``jax.distributed``) every
    process must pass the same count, so there chunks keep a fixed length of
    about 2% of the run."""

    def __init__(self, num_steps: int, chunk_size: int | None, length: int, rate: float | None = None):
        self.length, self.rate = length, rate
        self.fixed = chunk_size is not None or jax.process_count() > 1
        if chunk_size is None and self.fixed:
            self.steps = default_chunk(num_steps)
        elif chunk_size is not None:
            self.steps = length
        else:
            self.steps = FIRST_CHUNK if rate is None else self._steps_for(rate)
        self.steps = min(self.steps, length)

    def _steps_for(self, rate: float) -> int:
        return max(1, min(int(CHUNK_SECONDS / max(rate, 1e-9)), self.length))

    def update(self, done: int, seconds: float) -> None:
        if self.fixed or done < 1:
            return
        if done >= FIRST_CHUNK:  # a shorter chunk's time is mostly its fixed cost
            self.rate = seconds / done
        self.steps = self._steps_for(seconds / done)
