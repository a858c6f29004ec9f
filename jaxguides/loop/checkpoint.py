"""Checkpoints: a directory written through Orbax, never unpickled.

The directory format (steps, items, JSON metadata, checksums) is in
``loop/checkpoint_io.py``, which imports Orbax: it is imported only when a
checkpoint is written or read, so ``import jaxguides`` does not import Orbax.

A fit's checkpoint holds ``{"state": SVIState, "losses": float32[step],
"num_skipped": int}`` and, in its JSON, the run that wrote it
(``loop/run_identity.py``). ``fit`` opens a :class:`Checkpointer` for its length:
saves are asynchronous (the arrays are copied off their buffers, then written
while the next chunk runs), the last ``keep`` steps are kept, and ``close``
waits for the last save.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from jaxguides._errors import CheckpointError
from jaxguides.loop.run_identity import Record, difference

__all__ = [
    "Checkpointer",
    "load_checkpoint",
    "opened",
    "read_fit_checkpoint",
    "resume_state",
    "save_checkpoint",
    "write_fit_checkpoint",
]

_OLD_MAGIC = b"JAXGUIDES-CHECKPOINT-1\n"  # the single-file pickle format of jaxguides before Orbax


def save_checkpoint(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` into the directory ``path``, replacing what it held, atomically.

    ``payload`` is a pytree of arrays (``jax.Array``, sharded or not, typed PRNG
    keys included, or NumPy) and ``int`` / ``float`` / ``str`` / ``bool``
    leaves. Each process writes its own shards of a sharded array (call it on
    every process). Nothing is pickled; read it back with :func:`load_checkpoint`.
    """
    from jaxguides.loop import checkpoint_io as io

    path = os.fspath(path)
    _refuse_a_file(path)
    step = 0 if not os.path.isdir(path) else (io.latest_step(path) or 0) + 1
    mgr = io.manager(path, keep=1, asynchronous=False)
    try:
        io.save(mgr, step, payload)
        mgr.wait_until_finished()
    finally:
        mgr.close()


def load_checkpoint(path: str | os.PathLike[str], template: Any = None) -> Any:
    """Read the newest checkpoint in the directory ``path``, checking every array's checksum.

    Args:
        path: a directory written by :func:`save_checkpoint` or by ``fit``.
        template: a pytree of the payload's structure (arrays or
            ``jax.ShapeDtypeStruct``\\ s); its arrays' shapes and dtypes must
            match, and their shardings say where each array goes (another mesh
            than the one that wrote it is fine). Without it: a flat ``dict``
            from each leaf's path (``"state/params/loc/mu"``) to its value,
            arrays as NumPy (typed keys as keys).

    Returns:
        The payload: of ``template``'s structure, or the flat dict.

    Raises:
        CheckpointError: ``path`` is not a checkpoint, is truncated or
            corrupted, or does not fit ``template``; it is left as it was.
    """
    from jaxguides.loop import checkpoint_io as io

    path = os.fspath(path)
    step = _committed_step(path)
    if step is None:
        raise CheckpointError(path, "it holds no checkpoint (no committed step directory)")
    meta = io.read_meta(path, step)
    where = os.path.join(path, str(step))
    if template is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        entries = meta["leaves"]
        abstract = [
            jax.ShapeDtypeStruct(tuple(e["shape"]), e["dtype"], sharding=device) for e in entries if "shape" in e
        ]
        arrays = iter(io.restore(path, step, meta, abstract))
        return {e["path"]: e["value"] if "value" in e else _to_numpy(next(arrays)) for e in entries}
    return _restore_into(path, step, meta, template, where)


def _to_numpy(x: Any) -> Any:
    return x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(x)


def _restore_into(path: str, step: int, meta: dict[str, Any], template: Any, where: str) -> Any:
    from jaxguides.loop import checkpoint_io as io

    leaves, treedef = jax.tree.flatten(template)
    entries = meta["leaves"]
    if meta["treedef"] != str(treedef) or len(entries) != len(leaves):
        raise CheckpointError(
            where, "its payload has another structure than this one (another model, guide or optimizer)"
        )
    abstract = []
    for e, leaf in zip(entries, leaves):
        is_array = isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))
        if is_array != ("shape" in e):
            raise CheckpointError(
                where, f"its leaf {e['path']} is {'not ' if is_array else ''}an array, unlike this one"
            )
        if is_array:
            abstract.append(_abstract(leaf))
        elif type(e["value"]) is not type(leaf):
            raise CheckpointError(
                where, f"its leaf {e['path']} is a {type(e['value']).__name__}, not a {type(leaf).__name__}"
            )
    arrays = iter(io.restore(path, step, meta, abstract))
    return jax.tree.unflatten(treedef, [next(arrays) if "shape" in e else e["value"] for e in entries])


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    """Where a template leaf's stored array goes: its shape, dtype and sharding (none: NumPy);
    a typed key's, for its key data."""
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    sharding = leaf.sharding if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)) else None
    return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)


def _refuse_a_file(path: str) -> None:
    """A file at ``path`` is no checkpoint directory: an old single-file checkpoint says how to finish its run."""
    if not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(len(_OLD_MAGIC))
    if head == _OLD_MAGIC:
        raise CheckpointError(
            path,
            "it is a single-file (pickle) checkpoint of an older jaxguides, and this version reads only checkpoint "
            "directories written through Orbax (it never unpickles). Finish that run with the jaxguides version that "
            "started it, or delete the file to start over",
        )
    raise CheckpointError(path, "it is a file, not a jaxguides checkpoint directory")


def _committed_step(path: str) -> int | None:
    """The newest committed step of the checkpoint directory ``path``; ``None`` when it holds none
    (absent, empty, or only what a save killed before its commit left)."""
    from jaxguides.loop import checkpoint_io as io

    _refuse_a_file(path)
    if not os.path.isdir(path):
        return None
    step = io.latest_step(path)
    if step is None and any(".orbax-checkpoint-tmp" not in name for name in os.listdir(path)):
        raise CheckpointError(path, "it is a directory that holds no jaxguides checkpoint")
    return step


# ---- a fit's checkpoint -----------------------------------------------------------------------------
class Checkpointer:
    """``fit``'s checkpoint directory, open for one fit: asynchronous saves, the last ``keep`` kept.

    ``os.fspath(checkpointer)`` is its path. Orbax is started at the first save.
    """

    def __init__(self, path: str | os.PathLike[str], keep: int = 2):
        self.path, self.keep = os.fspath(path), keep
        self._manager: Any = None

    def __fspath__(self) -> str:
        return self.path

    def exists(self) -> bool:
        """A checkpoint is on disk or on its way there (saved in this fit)."""
        return self._manager is not None or os.path.isfile(self.path) or _committed_step(self.path) is not None

    def save(self, step: int, payload: Any, extra: dict[str, Any]) -> None:
        from jaxguides.loop import checkpoint_io as io

        if self._manager is None:
            self._manager = io.manager(self.path, keep=self.keep)
        io.save(self._manager, step, payload, extra)  # a step saved already (same state) is skipped by Orbax

    def close(self) -> None:
        """Wait for the last save to be committed (raising its error, if any)."""
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()


@contextlib.contextmanager
def opened(path: str | os.PathLike[str] | None, keep: int = 2) -> Iterator[Checkpointer | None]:
    """A :class:`Checkpointer` for ``path`` (``None``: none) closed on the way out, so a fit
    returns or raises only once its last save is committed."""
    checkpointer = None if path is None else Checkpointer(path, keep)
    try:
        yield checkpointer
    except BaseException:
        if checkpointer is not None:
            with contextlib.suppress(Exception):  # the error in flight is the one to report
                checkpointer.close()
        raise
    if checkpointer is not None:
        checkpointer.close()


def write_fit_checkpoint(
    checkpoint: Checkpointer | str | os.PathLike[str],
    state: Any,
    losses: np.ndarray,
    skipped: int,
    run: Record | None = None,
) -> None:
    """Save a fit's state as step ``state.step`` (asynchronously, through ``checkpoint``'s manager;
    a path is written at once). Each process writes its own shards: no gather."""
    from jaxguides import __version__

    step = int(np.max(jax.device_get(state.step)))
    payload = {"state": state, "losses": np.array(losses, np.float32), "num_skipped": int(skipped)}
    extra = {"jaxguides": __version__, "step": step, "run": run}
    if isinstance(checkpoint, Checkpointer):
        checkpoint.save(step, payload, extra)
    else:
        with opened(checkpoint, keep=2) as once:
            once.save(step, payload, extra)  # type: ignore[union-attr]


def read_fit_checkpoint(path: str, run: Record) -> Any:
    """The newest checkpoint in ``path`` (its step and JSON, no array read yet), or ``None`` when
    there is none; refused unless this run (see ``loop/run_identity.py``) wrote it."""
    from jaxguides.loop import checkpoint_io as io

    step = _committed_step(path)
    if step is None:
        return None
    meta = io.read_meta(path, step)
    where = os.path.join(path, str(step))
    saved = meta.get("run")
    if not (isinstance(saved, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in saved.items())):
        raise CheckpointError(
            where, "it holds no record of the run that wrote it (model, guide, optimizer, key, data), so it cannot be "
            "told from another run's",
        )  # fmt: skip
    if saved != run:
        raise CheckpointError(where, f"it belongs to another run: {difference(saved, run)}")
    if meta.get("step") != step:
        raise CheckpointError(where, f"its metadata says step {meta.get('step')!r}, its directory step {step}")
    return {"step": step, "meta": meta}


def resume_state(path: str, payload: Any, template: Any, num_steps: int) -> tuple[Any, np.ndarray, int]:
    """The saved state, restored into ``template``'s shapes and shardings, its losses and skip count."""
    step, meta = payload["step"], payload["meta"]
    where = os.path.join(path, str(step))
    if step > num_steps:  # going on would overwrite it with a truncated loss history
        raise CheckpointError(where, f"it is at step {step}, past num_steps={num_steps}; pass a larger num_steps")
    losses = jax.ShapeDtypeStruct((step,), np.float32)
    restored = _restore_into(path, step, meta, {"state": template, "losses": losses, "num_skipped": 0}, where)
    state = restored["state"]
    if int(np.max(jax.device_get(state.step))) != step:
        raise CheckpointError(where, f"its state is at step {int(np.max(state.step))}, its directory says {step}")
    return state, restored["losses"], restored["num_skipped"]
