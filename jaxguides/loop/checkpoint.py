"""Atomic save / load of a fit's state.

A checkpoint is one file: a magic line, the SHA-256 of the payload, then the
payload (a pickle of the state with every array moved to host numpy). Writes
go to a temporary file in the same folder, are fsync'ed, then renamed over
the target, so a kill during a write leaves the previous checkpoint intact.
A truncated or corrupted file fails its checksum and is refused.

Pickle runs code on load: only load checkpoints you wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxguides._errors import CheckpointError
from jaxguides.loop.run_identity import Record, difference
from jaxguides.parallel.sharding import gather

__all__ = ["load_checkpoint", "read_fit_checkpoint", "resume_state", "save_checkpoint", "write_fit_checkpoint"]

_MAGIC = b"JAXGUIDES-CHECKPOINT-1\n"
_DIGEST_LEN = 64  # hex sha256


def save_checkpoint(path: str | os.PathLike[str], payload: Any) -> None:
    """Atomically write ``payload`` (any pytree of arrays and picklable leaves)."""
    path = os.fspath(path)
    host = jax.tree.map(_to_host, payload)
    data = pickle.dumps(host, protocol=pickle.HIGHEST_PROTOCOL)
    digest = hashlib.sha256(data).hexdigest().encode()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + digest + b"\n" + data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its checksum.

    Raises:
        CheckpointError: the file is not a checkpoint, is truncated or corrupted.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise CheckpointError(path, f"it cannot be read ({err})") from err
    header_len = len(_MAGIC) + _DIGEST_LEN + 1
    if not raw.startswith(_MAGIC) or len(raw) < header_len:
        raise CheckpointError(path, "it is not a jaxguides checkpoint (bad header) or it is truncated")
    digest, data = raw[len(_MAGIC) : header_len - 1], raw[header_len:]
    if hashlib.sha256(data).hexdigest().encode() != digest:
        raise CheckpointError(path, "its checksum does not match (the file is truncated or corrupted)")
    try:
        payload = pickle.loads(data)
    except Exception as err:  # checksum passed: written by an incompatible version
        raise CheckpointError(
            path, f"it cannot be unpickled, so another version of jaxguides wrote it ({type(err).__name__}: {err})"
        ) from err
    return jax.tree.map(_from_host, payload, is_leaf=lambda x: isinstance(x, _KeyData))


@dataclasses.dataclass(frozen=True)
class _KeyData:
    """A typed PRNG key array (``jax.random.key``) on host: its raw data and impl name (a pytree leaf)."""

    data: np.ndarray
    impl: str


def _to_host(x: Any) -> Any:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return _KeyData(np.asarray(jax.random.key_data(x)), str(jax.random.key_impl(x)))
    return np.asarray(x) if isinstance(x, (jax.Array, np.ndarray)) else x


def _from_host(x: Any) -> Any:
    return jax.random.wrap_key_data(jax.numpy.asarray(x.data), impl=x.impl) if isinstance(x, _KeyData) else x


# ---- a fit's checkpoint: its state, losses and run record ----------------------------------
def write_fit_checkpoint(
    path: str | os.PathLike[str], state: Any, losses: np.ndarray, skipped: int, run: Record | None = None
) -> None:
    state = gather(state)  # a sharded state, whole on every process (a no-op on one process)
    if jax.process_index() == 0:
        save_checkpoint(path, {"state": state, "losses": np.asarray(losses), "num_skipped": skipped, "run": run})
    if jax.process_count() > 1:  # nobody goes on before the file is complete
        multihost_utils.sync_global_devices(f"jaxguides checkpoint {os.fspath(path)}")


def read_fit_checkpoint(path: str, run: Record) -> Any:
    """A checkpoint's payload, refused unless this run (see ``loop/run_identity.py``) wrote it."""
    payload = load_checkpoint(path)
    try:
        payload["state"], payload["losses"], payload["num_skipped"]  # noqa: B018
    except (TypeError, KeyError):
        raise CheckpointError(path, "it does not hold a fit state") from None
    saved = payload.get("run")
    if saved is None:
        raise CheckpointError(
            path,
            "it holds no record of the run that wrote it (model, guide, optimizer, key, data): an older jaxguides "
            "wrote it, so it cannot be told from another run's; finish that run with the version that started it",
        )
    if saved != run:
        raise CheckpointError(path, f"it belongs to another run: {difference(saved, run)}")
    return payload


def resume_state(path: str, payload: Any, template: Any, num_steps: int) -> tuple[Any, np.ndarray, int]:
    state, losses, skipped = payload["state"], payload["losses"], payload["num_skipped"]
    same = jax.tree.structure(state) == jax.tree.structure(template) and all(  # type: ignore[operator]
        np.shape(a) == np.shape(b) and _dtype(a) == _dtype(b)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(template))
    )
    if not same:
        raise CheckpointError(path, "it was written by a fit of another model, guide, optimizer or data shape")
    if int(state.step) > num_steps:  # going on would overwrite it with a truncated loss history
        raise CheckpointError(
            path, f"it is at step {int(state.step)}, past num_steps={num_steps}; pass a larger num_steps"
        )
    state = jax.tree.map(jnp.asarray, state)
    return state, np.asarray(losses), int(skipped)


def _dtype(x: Any) -> Any:
    return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
