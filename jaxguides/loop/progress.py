"""The progress bar: tqdm, or a no-op bar (a disabled tqdm still costs a call's overhead)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = ["NoBar", "begin_steps", "nanmean", "progress"]


def nanmean(x: np.ndarray, axis: int | None = None) -> Any:
    """``np.nanmean`` without its warning on all-NaN slices (skipped steps): NaN there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


class NoBar:
    """What ``fit`` calls on its bar, doing nothing (a disabled tqdm still costs a call's overhead)."""

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None

    def set_postfix(self, **kwargs: Any) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        return None

    def reset(self, total: int | None = None) -> None:
        return None


def progress(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar, or a no-op one when ``progress_bar=False``. Its description
    names the phase: ``fit: tracing``, ``fit: compiling``, then ``fit`` while
    steps run (``fit: interrupted`` after Ctrl-C)."""
    return tqdm(**kwargs) if enabled else NoBar()


def begin_steps(bar: Any, step: int, description: str) -> None:
    """The bar from the first step on: ``step`` steps done (a resumed fit), its
    clock and rate counted from now, not from the start of tracing."""
    bar.reset()
    bar.n = bar.initial = bar.last_print_n = step
    bar.set_description(description)
