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
import numpy as np

from jaxguides._errors import CheckpointError

__all__ = ["load_checkpoint", "save_checkpoint"]

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
