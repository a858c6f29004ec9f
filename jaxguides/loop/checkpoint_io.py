"""A checkpoint directory, written and read through Orbax, never unpickled.

``path/<step>/`` is one committed checkpoint (Orbax writes it under a
temporary name and renames it when complete, so a kill leaves the previous
step whole); the newest step is the one read. Each step holds two items:

- ``arrays``: the payload's array leaves (``leaf<i>``, a typed PRNG key as its
  key data), written by Orbax's array handlers, each process its own shards;
- ``meta``: JSON describing the payload: its format, the ``str`` of its
  treedef, and per leaf its path, shape, dtype, key impl and checksum, or its
  value (a JSON-able Python leaf: ``int``, ``float``, ``str``, ``bool``),
  and a SHA-256 of all that.

Loading checks the JSON against what the caller expects before reading an
array, restores arrays into the caller's shapes and shardings (another mesh
is fine), and verifies each array's checksum. The checksum is computed on the
arrays' devices: a 64-bit sum mod 2**64 (two 32-bit lanes) of a mixed hash of
each 32-bit word and its position, so it is the same for any sharding, needs
no host copy and no gather. It detects damage, not forgery: a crafted
checkpoint can only be refused or loaded as data, since nothing in it is run.

Orbax is imported here only, and this module only when a checkpoint is used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxguides._errors import CheckpointError

__all__ = ["FORMAT", "latest_step", "manager", "read_meta", "restore", "save"]

FORMAT = "jaxguides-checkpoint-2"
_ITEMS = ("arrays", "meta")
_JSON = (bool, int, float, str)


def manager(path: str, keep: int, asynchronous: bool = True) -> ocp.CheckpointManager:
    """Orbax's manager writing steps into ``path``, keeping the last ``keep`` of them."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=asynchronous,
        cleanup_tmp_directories=True,  # what a killed save left
    )
    return ocp.CheckpointManager(os.path.abspath(path), options=options, item_names=_ITEMS)


def latest_step(path: str) -> int | None:
    """The newest committed step in the directory ``path``, or ``None``."""
    steps = [int(name) for name in os.listdir(path) if name.isdigit() and os.path.isdir(os.path.join(path, name))]
    return max(steps, default=None)


# ---- save ------------------------------------------------------------------------------------------
def save(mgr: ocp.CheckpointManager, step: int, payload: Any, extra: dict[str, Any] | None = None) -> None:
    """Start writing ``payload`` as ``step`` (asynchronous when ``mgr`` is): it returns once
    the arrays are copied off their buffers, so they may be donated right after."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(payload)
    arrays: dict[str, Any] = {}  # what Orbax writes: it refuses an empty array, kept in the JSON alone
    hashed: list[Any] = []
    described = []
    for i, (keypath, leaf) in enumerate(leaves):
        entry: dict[str, Any] = {"path": _path(keypath)}
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            stored, impl = _storable(leaf)
            hashed.append(stored if isinstance(stored, jax.Array) else np.array(stored))
            if np.size(stored):
                arrays[f"leaf{i}"] = hashed[-1]
            entry |= {"shape": list(np.shape(stored)), "dtype": np.dtype(stored.dtype).name, "key_impl": impl}
        elif isinstance(leaf, _JSON):
            entry["value"] = leaf
        else:
            raise TypeError(f"a checkpoint holds arrays and int/float/str/bool leaves, not {type(leaf).__name__}")
        described.append(entry)
    digests = checksums(hashed)
    for entry, digest in zip((e for e in described if "shape" in e), digests):
        entry["checksum"] = digest
    meta = {"format": FORMAT, "treedef": str(treedef), "leaves": described, **(extra or {})}
    meta["digest"] = _meta_digest(meta)
    mgr.save(step, args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))


def _path(keypath: Any) -> str:
    return jax.tree_util.keystr(keypath, simple=True, separator="/")


def _storable(x: Any) -> tuple[Any, str | None]:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(x), str(jax.random.key_impl(x))
    return x, None


# ---- load ------------------------------------------------------------------------------------------
def read_meta(path: str, step: int) -> dict[str, Any]:
    """The JSON of ``step``, checked to be a jaxguides checkpoint's (not trusted beyond that)."""
    where = os.path.join(path, str(step))
    try:
        with open(os.path.join(where, "meta", "metadata"), "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(where, f"its metadata cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not _well_formed(meta):
        raise CheckpointError(where, f"its metadata is not that of a {FORMAT} checkpoint (wrong structure)")
    if meta.get("digest") != _meta_digest(meta):
        raise CheckpointError(where, "the checksum of its metadata (meta/metadata) does not match (corrupted)")
    return meta


def _meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of the metadata without its ``digest`` entry, as canonical JSON."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _well_formed(meta: Any) -> bool:
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT and isinstance(meta.get("treedef"), str)):
        return False
    leaves = meta.get("leaves")
    return isinstance(leaves, list) and all(_well_formed_leaf(e) for e in leaves)


def _well_formed_leaf(e: Any) -> bool:
    if not isinstance(e, dict) or not isinstance(e.get("path"), str):
        return False
    if "value" in e:
        return isinstance(e["value"], _JSON)
    shape, dtype, impl, digest = e.get("shape"), e.get("dtype"), e.get("key_impl"), e.get("checksum")
    return (
        isinstance(shape, list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        and isinstance(dtype, str)
        and dtype in _DTYPES
        and (impl is None or isinstance(impl, str))
        and isinstance(digest, str)
    )


_DTYPES = (
    {np.dtype(t).name for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")}
    | {np.dtype(t).name for t in ("uint64", "float16", "float32", "float64", "complex64", "complex128")}
    | {"bfloat16"}
)


def restore(path: str, step: int, meta: dict[str, Any], abstract: list[Any]) -> list[Any]:
    """The array leaves of ``step``, restored into ``abstract`` (one ``jax.ShapeDtypeStruct`` per
    array leaf of ``meta``, with a sharding for a ``jax.Array``, without for a NumPy array), each
    checked against ``meta`` (shape, dtype, checksum); typed keys come back as keys."""
    where = os.path.join(path, str(step))
    entries = [(i, e) for i, e in enumerate(meta["leaves"]) if "shape" in e]
    for (_, e), want in zip(entries, abstract):
        if tuple(e["shape"]) != tuple(want.shape) or e["dtype"] != np.dtype(want.dtype).name:
            raise CheckpointError(
                where,
                f"its array {e['path']} is {e['dtype']}{e['shape']}, this run's is {want.dtype}{list(want.shape)}",
            )
    target = {f"leaf{i}": want for (i, _), want in zip(entries, abstract) if np.prod(want.shape, dtype=int)}
    try:  # the handler itself, not a manager: nothing named in the checkpoint picks the code that reads it
        with ocp.StandardCheckpointer() as reader:
            restored = reader.restore(os.path.join(os.path.abspath(where), "arrays"), target)
        arrays = [
            restored[f"leaf{i}"] if f"leaf{i}" in target else _empty(want) for (i, _), want in zip(entries, abstract)
        ]
    except CheckpointError:
        raise
    except Exception as err:  # tensorstore / orbax: a missing, truncated or garbled file
        raise CheckpointError(where, f"its arrays cannot be read ({type(err).__name__}: {_short(err)})") from None
    for (_, e), digest in zip(entries, checksums(arrays)):
        if digest != e["checksum"]:
            raise CheckpointError(where, f"the checksum of its array {e['path']} does not match (corrupted)")
    return [_from_stored(x, e["key_impl"], where) for (_, e), x in zip(entries, arrays)]


def _empty(want: jax.ShapeDtypeStruct) -> Any:
    if want.sharding is None:
        return np.zeros(want.shape, want.dtype)
    return jax.device_put(np.zeros(want.shape, want.dtype), want.sharding)


def _from_stored(x: Any, impl: str | None, where: str) -> Any:
    if impl is None:
        return x
    try:
        return jax.random.wrap_key_data(x, impl=impl)
    except Exception as err:
        raise CheckpointError(where, f"it names an unknown PRNG key impl {impl!r} ({err})") from None


def _short(err: BaseException, n: int = 300) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= n else text[:n] + "..."


# ---- checksums, on the arrays' devices ---------------------------------------------------------------
def checksums(arrays: list[Any]) -> list[str]:
    """A hex digest per array (see module doc), the same for any sharding of it."""
    on_device = [x for x in arrays if isinstance(x, jax.Array)]
    on_host = [jnp.asarray(x) for x in arrays if not isinstance(x, jax.Array)]
    device = iter(np.asarray(_digests(on_device)) if on_device else ())
    host = iter(np.asarray(_digests(on_host)) if on_host else ())
    out = [next(device) if isinstance(x, jax.Array) else next(host) for x in arrays]
    return [f"{int(a):08x}{int(b):08x}" for a, b in out]


@jax.jit
def _digests(arrays: list[jax.Array]) -> jax.Array:
    return jnp.stack([_digest(x) for x in arrays])


def _digest(x: jax.Array) -> jax.Array:
    words = _words(x)
    index = functools.reduce(
        lambda acc, d: acc * jnp.uint32(words.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, words.shape, d),
        range(words.ndim),
        jnp.zeros(words.shape, jnp.uint32),
    )
    lanes = [
        jnp.sum(_mix(words ^ _mix(index + jnp.uint32(seed))), dtype=jnp.uint32) for seed in (0x9E3779B9, 0x85EBCA6B)
    ]
    return jnp.stack(lanes)


def _words(x: jax.Array) -> jax.Array:
    """``x``'s bits as ``uint32`` words (a 64-bit element is two)."""
    size = np.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    if size < 4:
        return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        x = jnp.stack([x.real, x.imag], axis=-1)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _mix(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser (an avalanche: every input bit flips half the output bits)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)
