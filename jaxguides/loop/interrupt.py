"""Ctrl-C during a fit: stop at the next chunk boundary, never at a random point.

Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main
thread happens to be: half-way through a checkpoint write, inside a callback
that JAX calls from the garbage collector (which swallowed it), or while the
compile-ahead thread is still in XLA (interpreter shutdown racing it crashed
with a segfault). So while ``fit`` runs, :func:`interruptible` puts in a
handler that only records the request and puts back ``SIG_DFL``: ``fit``
looks at :meth:`Interrupts.requested` between chunks (and once tracing and
compilation return) and raises :class:`FitInterrupted` with the state there,
and a second Ctrl-C ends the process at once, even while XLA compiles in C++
(where no Python handler runs). The handler is put in only from the main
thread and only over Python's own default handler (a handler of the user's,
or ``SIG_IGN``, is left alone); the previous one is always put back.
"""

from __future__ import annotations

import contextvars
import functools
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Interrupts", "current", "interruptible"]

F = TypeVar("F", bound=Callable[..., Any])


class Interrupts:
    """Whether Ctrl-C was pressed since the fit began (see module doc)."""

    def __init__(self) -> None:
        self.pending = False
        self._previous: Any = None

    def requested(self) -> bool:
        return self.pending

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.pending = True
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C ends the process at once

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


_NEVER = Interrupts()  # outside interruptible(): never requested
_CURRENT: contextvars.ContextVar[Interrupts] = contextvars.ContextVar("jaxguides_interrupts", default=_NEVER)


def current() -> Interrupts:
    """The :class:`Interrupts` of the fit running in this context."""
    return _CURRENT.get()


def interruptible(late: Callable[[Any], BaseException]) -> Callable[[F], F]:
    """Run the decorated function with Ctrl-C recorded instead of raised (see
    module doc). It looks at :func:`current` itself; a Ctrl-C it had no chance
    to see (pressed after its last look) raises ``late(result)`` once the
    handler is back, and one pressed before it failed raises
    ``KeyboardInterrupt`` from that failure: an interrupt is never swallowed."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            interrupts = Interrupts()
            interrupts.install()
            token = _CURRENT.set(interrupts)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                interrupts.restore()
                if interrupts.pending:
                    raise KeyboardInterrupt("interrupted while the fit failed (the failure is chained)") from exc
                raise
            finally:
                _CURRENT.reset(token)
                interrupts.restore()
            if interrupts.pending:
                raise late(result)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
