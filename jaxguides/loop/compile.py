"""Compiling beside the main thread: trace here, let XLA compile on a worker, so that
Ctrl-C is seen at once even during a long compile (``loop/interrupt.py``)."""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxguides.loop.chunks import (
    run_chunk,
)
from jaxguides.svi.state import (
    SVIState,
)

__all__ = ["compile_ahead", "compile_beside", "wait_for"]


@functools.cache
def _compiler() -> concurrent.futures.ThreadPoolExecutor:
    """Two threads, made on the first fit (not at import): the chunk and init
    compile side by side (XLA releases the GIL). No state: a pool of workers."""
    return concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="jaxguides-compile")


def compile_beside(fn: Any, *args: Any) -> concurrent.futures.Future[Any]:
    """Trace ``fn(*args)`` (a ``functools.partial`` of a jitted function) here
    and compile it on a compile thread.

    Tracing stays on this thread (NumPyro's handler stack is global). The
    compiled program lands in the jitted function's cache, so the real call
    finds it there. A failure here is left to the real call to report.
    """
    try:
        lowered = fn.func.lower(*args, **fn.keywords)
    except Exception:  # noqa: BLE001 - the real call raises it properly
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(None)
        return done

    def compile_quietly() -> None:
        try:
            lowered.compile()
        except Exception:  # noqa: BLE001
            pass

    return _compiler().submit(compile_quietly)


def compile_ahead(
    init: Callable[..., SVIState], chunk_static: dict[str, Any], rng_key: jax.Array, end: jax.Array, dynamic: list[Any]
) -> concurrent.futures.Future[Any]:
    """Compile the chunk from the shapes of ``init``'s state, while ``init`` compiles and runs."""
    try:
        abstract = jax.eval_shape(init, rng_key, dynamic)
    except Exception:  # noqa: BLE001 - the real call raises it properly
        abstract = None
    return compile_beside(functools.partial(run_chunk, **chunk_static), abstract, end, dynamic)


def wait_for(compiling: list[concurrent.futures.Future[Any]]) -> None:
    """Wait for the compile threads: a wait in Python, so SIGINT's handler runs at once."""
    while compiling:
        compiling.pop().result()
