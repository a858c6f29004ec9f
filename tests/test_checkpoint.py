"""Checkpoints (a directory written through Orbax): the save/load round trip,
fit's resume bit for bit, asynchronous saves, keep-last-N, refusal of damaged,
crafted, old-format and other runs' checkpoints (left as they were), and
failed writes that keep the previous checkpoint."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from orbax.checkpoint import handlers

import jaxguides as jg
from jaxguides.loop import checkpoint as _checkpoint
from jaxguides.loop import checkpoint_io as _checkpoint_io


def model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def other_model(y):  # the same sites and shapes, another model
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.StudentT(3.0, mu, s), obs=y)


Y = jnp.linspace(-1.0, 3.0, 10)
GUIDE = jg.AutoNormal(model)
OPT = optax.adam(0.02)
T = 120


def _run(num_steps, key=None, **kwargs):
    key = jax.random.PRNGKey(0) if key is None else key
    return jg.fit(model, GUIDE, OPT, key, num_steps, Y, progress_bar=False, **kwargs)


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _keys_equal(a, b):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


def _steps(path):
    return sorted(int(n) for n in os.listdir(path) if n.isdigit())


def _files(path):
    """Every file under ``path`` with its bytes: what "left as it was" compares."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return out


def _meta_file(path, step=None):
    step = _steps(path)[-1] if step is None else step
    return os.path.join(path, str(step), "meta", "metadata")


def _edit_meta(path, edit, digest=True):
    """Edit the newest step's JSON, with a matching digest (a crafted file) unless not ``digest``."""
    with open(_meta_file(path)) as f:
        meta = json.load(f)
    edit(meta)
    if digest:
        meta["digest"] = _checkpoint_io._meta_digest(meta)
    with open(_meta_file(path), "w") as f:
        json.dump(meta, f)


@pytest.fixture(scope="module")
def uninterrupted():
    return _run(T)


def test_importing_jaxguides_does_not_import_orbax():
    code = "import sys, jaxguides; assert 'orbax' not in ' '.join(sys.modules), 'orbax imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- save / load ------------------------------------------------------------------------------
def test_round_trip(tmp_path):
    state = _run(5).state
    payload = {"state": state, "losses": np.arange(5, dtype=np.float32), "note": "x", "n": 3}
    path = tmp_path / "a.ckpt"
    jg.save_checkpoint(path, payload)
    back = jg.load_checkpoint(path, payload)  # the template gives the structure, static parts included
    assert isinstance(back["state"], jg.SVIState)
    _equal(back["state"], state)
    assert back["state"].params.sites == state.params.sites
    assert isinstance(back["losses"], np.ndarray) and isinstance(back["state"].step, jax.Array)
    np.testing.assert_array_equal(back["losses"], payload["losses"])
    assert back["note"] == "x" and back["n"] == 3
    # the loaded params work with a new guide built with the same arguments
    loss = jg.elbo_loss(model, jg.AutoNormal(model))
    key = jax.random.PRNGKey(1)
    assert loss(back["state"].params, key, Y) == loss(state.params, key, Y)
    # without a template: a flat dict of leaf paths, arrays as NumPy
    flat = jg.load_checkpoint(path)
    assert flat["note"] == "x" and flat["n"] == 3 and int(flat["state/step"]) == 5
    np.testing.assert_array_equal(flat["state/params/loc/mu"], state.params.loc["mu"])
    # saving again replaces it: one committed step, no temporary directory left
    jg.save_checkpoint(path, {**payload, "n": 4})
    assert jg.load_checkpoint(path, payload)["n"] == 4
    assert os.listdir(path) == ["1"] and os.listdir(tmp_path) == ["a.ckpt"]


def test_round_trip_typed_keys(tmp_path):
    key = jax.random.key(3)
    jg.save_checkpoint(tmp_path / "k", {"key": key, "keys": jax.random.split(key, 4)})
    back = jg.load_checkpoint(tmp_path / "k", {"key": key, "keys": jax.random.split(key, 4)})
    _keys_equal(back["key"], key)
    _keys_equal(back["keys"], jax.random.split(key, 4))
    _keys_equal(jg.load_checkpoint(tmp_path / "k")["keys"], jax.random.split(key, 4))


def test_template_of_another_structure_or_shape_is_refused(tmp_path):
    jg.save_checkpoint(tmp_path / "c", {"a": np.zeros(3, np.float32), "b": 1})
    for template, what in [
        ({"a": np.zeros(3, np.float32)}, "another structure"),
        ({"a": np.zeros(4, np.float32), "b": 1}, r"its array a is float32\[3\], this run's is float32\[4\]"),
        ({"a": np.zeros(3, np.int32), "b": 1}, r"its array a is float32\[3\], this run's is int32\[3\]"),
        ({"a": np.zeros(3, np.float32), "b": "1"}, "its leaf b is a int, not a str"),
        ({"a": 0, "b": 1}, "its leaf a is an array"),
    ]:
        with pytest.raises(jg.CheckpointError, match=what):
            jg.load_checkpoint(tmp_path / "c", template)


# ---- fit writes, resumes ----------------------------------------------------------------------
def test_fit_writes_checkpoint_every_n_steps_and_keeps_the_last_two(tmp_path, loop_io, uninterrupted):
    saved = []

    def spy(path, state, losses, skipped, *run):
        saved.append((int(state.step), len(losses)))
        real.save(path, state, losses, skipped, *run)

    real = loop_io(save=spy)
    path = tmp_path / "run.ckpt"
    result = _run(T, checkpoint=path, checkpoint_every=25)
    assert [s for s, _ in saved] == [25, 50, 75, 100, 120]
    assert all(step == n for step, n in saved)  # the losses so far go with the state
    on_disk = jg.load_checkpoint(path)
    assert int(on_disk["state/step"]) == T
    np.testing.assert_array_equal(on_disk["losses"], result.losses)
    np.testing.assert_array_equal(on_disk["state/params/loc/mu"], result.params.loc["mu"])
    # writing checkpoints changes nothing in the fit itself
    np.testing.assert_array_equal(result.losses, uninterrupted.losses)
    _equal(result.state, uninterrupted.state)
    assert _steps(path) == [100, 120] and sorted(os.listdir(path)) == ["100", "120"]  # keep-last-2, no temp left
    assert os.listdir(tmp_path) == ["run.ckpt"]


@pytest.mark.parametrize("keep", [1, 3])
def test_checkpoint_keep(tmp_path, keep):
    _run(T, checkpoint=tmp_path / "run", checkpoint_every=25, checkpoint_keep=keep)
    assert _steps(tmp_path / "run") == [25, 50, 75, 100, 120][-keep:]


def test_checkpoint_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_keep"):
        _run(5, checkpoint=tmp_path / "run", checkpoint_keep=0)


@pytest.mark.parametrize("first", [1, 37, 60])
def test_resume_is_bit_for_bit(tmp_path, first, uninterrupted):
    path = tmp_path / "run.ckpt"
    part = _run(first, checkpoint=path)
    assert int(jg.load_checkpoint(path)["state/step"]) == first
    np.testing.assert_array_equal(part.losses, uninterrupted.losses[:first])
    resumed = _run(T, checkpoint=path)
    np.testing.assert_array_equal(resumed.losses, uninterrupted.losses)
    _equal(resumed.state, uninterrupted.state)
    _equal(resumed.params, uninterrupted.params)
    # and again: a finished run resumes to itself without a step
    again = _run(T, checkpoint=path)
    np.testing.assert_array_equal(again.losses, uninterrupted.losses)
    _equal(again.state, uninterrupted.state)


def test_killed_run_resumes_bit_for_bit(tmp_path, loop_io, uninterrupted):
    """A run killed mid-way (here: KeyboardInterrupt in the 4th chunk) loses at most
    checkpoint_every steps, and re-running the same command ends where an
    uninterrupted run does."""
    path = tmp_path / "run.ckpt"
    calls = []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real.run_chunk(*args, **kwargs)

    real = loop_io(run_chunk=dies)
    with pytest.raises(KeyboardInterrupt):
        _run(T, checkpoint=path, checkpoint_every=20, chunk_size=10)
    assert _steps(path) == [20]  # 3 chunks of 10 ran; the last checkpoint was at step 20, committed
    loop_io(run_chunk=real.run_chunk)
    resumed = _run(T, checkpoint=path, checkpoint_every=20, chunk_size=10)
    np.testing.assert_array_equal(resumed.losses, uninterrupted.losses)
    _equal(resumed.state, uninterrupted.state)


def test_zero_steps_writes_the_initial_state(tmp_path, uninterrupted):
    """Step 0: empty losses (Orbax refuses an empty array: it is kept in the JSON alone)."""
    _run(0, checkpoint=tmp_path / "run")
    assert _steps(tmp_path / "run") == [0] and jg.load_checkpoint(tmp_path / "run")["losses"].shape == (0,)
    resumed = _run(T, checkpoint=tmp_path / "run")
    np.testing.assert_array_equal(resumed.losses, uninterrupted.losses)


def test_resume_with_typed_key(tmp_path):
    key = jax.random.key(7)
    full = _run(40, key=key)
    path = tmp_path / "run.ckpt"
    _run(15, key=key, checkpoint=path)
    resumed = _run(40, key=key, checkpoint=path)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    _equal(resumed.params, full.params)
    _keys_equal(resumed.state.rng_key, full.state.rng_key)


def test_nonfinite_stop_saves_the_last_finite_state(tmp_path):
    def blowup(threshold):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("pull", 2.0 * x)
        numpyro.factor("bad", jnp.where(x > threshold, jnp.nan, 0.0))

    guide, opt, path = jg.AutoDelta(blowup), optax.sgd(0.1), tmp_path / "run.ckpt"
    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(blowup, guide, opt, jax.random.PRNGKey(0), 30, 1.0, checkpoint=path, progress_bar=False)
    template = {"state": info.value.state, "losses": info.value.losses, "num_skipped": 0}
    on_disk = jg.load_checkpoint(path, template)  # committed before fit raised
    _equal(on_disk["state"], info.value.state)
    assert _steps(path) == [info.value.step]
    np.testing.assert_array_equal(on_disk["losses"], info.value.losses)


# ---- asynchronous saves -----------------------------------------------------------------------------
def _hold_json_writes(monkeypatch, release):
    """Orbax writes each step's JSON in its background thread: make it wait for ``release``."""
    real, held = handlers.JsonCheckpointHandler._save_fn, []

    async def held_save(self, x, directory):
        held.append(None)  # the write began ...
        held[-1] = release.wait(timeout=60)  # ... and was released (True) or timed out (False)
        await real(self, x, directory)

    monkeypatch.setattr(handlers.JsonCheckpointHandler, "_save_fn", held_save)
    return held


def test_saves_are_asynchronous(tmp_path, monkeypatch, loop_io, uninterrupted):
    """The chunk after a save runs while that save is still being written: each write
    waits for the chunk after its save to start (it would time out, were saves synchronous)."""
    release = threading.Event()
    held = _hold_json_writes(monkeypatch, release)
    saves, committed_at_chunk = [], []

    def save(*args):
        saves.append(1)
        real.save(*args)

    def run(*args, **kwargs):
        if saves:  # a save was started before this chunk: what is committed now, then let it be written
            committed_at_chunk.append(_steps(tmp_path / "run"))
            release.set()
        return real.run_chunk(*args, **kwargs)

    real = loop_io(save=save, run_chunk=run)
    result = _run(60, checkpoint=tmp_path / "run", checkpoint_every=20, chunk_size=20)
    assert committed_at_chunk[0] == []  # the chunk after the step-20 save began before that save was committed
    assert committed_at_chunk[1] in ([], [20])
    assert len(held) == 3 and all(held)  # the first write was released by the chunk after it, none timed out
    assert _steps(tmp_path / "run") == [40, 60]
    np.testing.assert_array_equal(result.losses, uninterrupted.losses[:60])


def test_fit_returns_and_raises_only_once_the_save_is_committed(tmp_path, monkeypatch):
    """Each write held 0.3 s in Orbax's background thread: the step is committed by the time
    ``fit`` returns, and by the time it raises (a non-finite stop saves, then raises)."""
    late = threading.Event()
    monkeypatch.setattr(late, "wait", lambda timeout: threading.Event().wait(0.3) or True)
    held = _hold_json_writes(monkeypatch, late)
    _run(10, checkpoint=tmp_path / "a")
    assert held and _steps(tmp_path / "a") == [10]

    def blowup():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("pull", 2.0 * x)
        numpyro.factor("bad", jnp.where(x > 1.0, jnp.nan, 0.0))

    with pytest.raises(jg.NonFiniteLossError) as info:
        jg.fit(blowup, jg.AutoDelta(blowup), optax.sgd(0.1), jax.random.PRNGKey(0), 30, checkpoint=tmp_path / "b",
               progress_bar=False)  # fmt: skip
    assert _steps(tmp_path / "b") == [info.value.step]


# ---- refusals ---------------------------------------------------------------------------------
def _refused(path, match, **kwargs):
    before = _files(path) if os.path.isdir(path) else path.read_bytes()
    with pytest.raises(jg.CheckpointError, match=match) as info:
        _run(T, checkpoint=path, **kwargs)
    assert str(path) in str(info.value) and info.value.path.startswith(str(path))
    assert (_files(path) if os.path.isdir(path) else path.read_bytes()) == before  # left as it was
    return info.value


def _data_files(path, merged=True):
    """The files of the newest step's arrays: the merged OCDBT database that loads read
    (``merged``), or the per-process ones it was merged from."""
    arrays = os.path.join(path, str(_steps(path)[-1]), "arrays")
    if merged:
        return [
            os.path.join(arrays, "manifest.ocdbt"),
            *(os.path.join(arrays, "d", n) for n in os.listdir(arrays + "/d")),
        ]
    return [os.path.join(r, n) for r, _, names in os.walk(arrays) for n in names if "ocdbt.process_" in r]


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    pristine = tmp_path / "pristine"
    shutil.copytree(path, pristine)
    targets = [*_data_files(path), _meta_file(path)]
    assert len(targets) >= 3
    for target in targets:
        raw = open(target, "rb").read()
        for cut in (len(raw) - 1, len(raw) // 2, 0):
            with open(target, "wb") as f:
                f.write(raw[:cut])
            err = _refused(path, "cannot be read|checksum|wrong structure")
            assert os.path.join(str(path), "10") in str(err)  # names the step directory
        with open(target, "wb") as f:
            f.write(raw)
    assert int(jg.load_checkpoint(path)["state/step"]) == 10  # whole again: it loads


def test_corrupted_checkpoint_is_refused(tmp_path):
    """A flipped bit in what a load reads (the metadata, the merged database) is refused;
    one in the per-process databases it was merged from is refused or not read at all
    (then the load gives the saved values bit for bit)."""
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    saved = jg.load_checkpoint(path)
    unread = []
    for target, must in [(_meta_file(path), True), *((f, True) for f in _data_files(path))] + [
        (f, False) for f in _data_files(path, merged=False)
    ]:
        raw = open(target, "rb").read()
        for where in (len(raw) - 5, len(raw) // 2, 3):
            flipped = bytearray(raw)
            flipped[where] ^= 0x01
            with open(target, "wb") as f:
                f.write(bytes(flipped))
            try:
                loaded = jg.load_checkpoint(path)
            except jg.CheckpointError as err:
                assert os.path.join(str(path), "10") in str(err)
                _refused(path, "checksum|cannot be read|wrong structure|another run|metadata says")
            else:
                assert not must, (target, where)
                unread.append(target)
                assert sorted(loaded) == sorted(saved)
                for k, v in saved.items():
                    np.testing.assert_array_equal(loaded[k], v)
        with open(target, "wb") as f:
            f.write(raw)


def test_checksum_mismatch_names_the_array(tmp_path):
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    entry = lambda meta: next(e for e in meta["leaves"] if e["path"] == "state/params/loc/mu")  # noqa: E731
    _edit_meta(path, lambda meta: entry(meta).update(checksum="0" * 16))
    _refused(path, r"checksum of its array state/params/loc/mu does not match")
    _edit_meta(path, lambda meta: entry(meta).update(checksum="1" * 16), digest=False)
    _refused(path, r"checksum of its metadata \(meta/metadata\) does not match")


class _Bomb:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file when unpickled


def test_crafted_checkpoints_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(_Bomb(str(marker)))
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    pristine = _files(path)

    def reset():
        shutil.rmtree(path)
        for rel, data in pristine.items():
            os.makedirs(os.path.dirname(path / rel), exist_ok=True)
            (path / rel).write_bytes(data)

    # a pickle where a file is expected: the metadata, each array file, Orbax's own metadata
    for target in [_meta_file(path), *_data_files(path), os.path.join(path, "10", "arrays", "_METADATA")]:
        with open(target, "wb") as f:
            f.write(bomb)
        _refused(path, "cannot be read")
        with pytest.raises(jg.CheckpointError):
            jg.load_checkpoint(path)
        reset()
    # JSON of the wrong structure, or naming what this run does not have
    for edit, what in [
        (lambda m: m.update(leaves="x"), "wrong structure"),
        (lambda m: m.update(format="something-else"), "wrong structure"),
        (lambda m: m["leaves"][0].update(dtype="object"), "wrong structure"),
        (lambda m: m["leaves"][0].update(shape=[3]), r"its array losses is float32\[3\], this run's is float32\[10\]"),
        (lambda m: m["leaves"][0].update(dtype="float64"), r"its array losses is float64\[10\], this run's is float32"),
        (lambda m: m.update(treedef="PyTreeDef(*)"), "another structure"),
        (lambda m: m.update(step=11), "metadata says step 11"),
        (lambda m: m.pop("run"), "no record of the run"),
        (lambda m: m.update(run={"model": 1}), "no record of the run"),
    ]:
        _edit_meta(path, edit)
        _refused(path, what)
        reset()
    # an array of another shape dropped in (Orbax's files of another checkpoint): refused, not padded
    jg.save_checkpoint(tmp_path / "a", {"x": np.arange(3.0, dtype=np.float32)})
    jg.save_checkpoint(tmp_path / "b", {"x": np.arange(4.0, dtype=np.float32)})
    jg.save_checkpoint(tmp_path / "c", {"x": np.arange(3, dtype=np.int32) + 5})
    for other in ("b", "c"):
        shutil.rmtree(tmp_path / "a" / "0" / "arrays")
        shutil.copytree(tmp_path / other / "0" / "arrays", tmp_path / "a" / "0" / "arrays")
        with pytest.raises(jg.CheckpointError, match="cannot be read|checksum"):
            jg.load_checkpoint(tmp_path / "a", {"x": np.zeros(3, np.float32)})
    assert not marker.exists()  # nothing was unpickled


def test_old_single_file_checkpoint_says_how_to_finish_its_run(tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"JAXGUIDES-CHECKPOINT-1\n" + b"0" * 64 + b"\n" + pickle.dumps({"state": 1}))
    err = _refused(path, "single-file \\(pickle\\) checkpoint of an older jaxguides")
    assert "Finish that run with the jaxguides version that started it, or delete the file" in str(err)
    with pytest.raises(jg.CheckpointError, match="single-file"):
        jg.load_checkpoint(path)
    with pytest.raises(jg.CheckpointError, match="single-file"):
        jg.save_checkpoint(path, {"x": 1})
    assert path.read_bytes().startswith(b"JAXGUIDES-CHECKPOINT-1")


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(pickle.dumps({"state": 1}))
    _refused(path, "a file, not a jaxguides checkpoint directory")
    path.unlink()
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    _refused(path, "holds no jaxguides checkpoint")
    with pytest.raises(jg.CheckpointError, match="holds no checkpoint"):
        jg.load_checkpoint(tmp_path / "missing")


def test_an_empty_directory_starts_afresh(tmp_path, uninterrupted):
    (tmp_path / "run").mkdir()
    result = _run(T, checkpoint=tmp_path / "run")
    np.testing.assert_array_equal(result.losses, uninterrupted.losses)
    assert _steps(tmp_path / "run") == [T]


def test_checkpoint_of_another_fit_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    jg.fit(
        other_model, jg.AutoNormal(other_model), OPT, jax.random.PRNGKey(0), 10, Y, checkpoint=path, progress_bar=False
    )
    err = _refused(path, "another run: model: test_checkpoint.other_model in the checkpoint, test_checkpoint.model in")
    assert "optimizer" not in str(err) and "data of" not in str(err)  # only what differs is named
    # another data shape, other data, another optimizer, another guide type, another key
    for model_, guide, opt, y, key, what in [
        (model, GUIDE, OPT, Y[:5], 0, r"shape of y \(args\[0\]\): float32\[5\] in the checkpoint, float32\[10\] in"),
        (model, GUIDE, OPT, Y + 1.0, 0, r"data of y \(args\[0\]\): other values"),
        (model, GUIDE, optax.sgd(0.1), Y, 0, "optimizer: "),
        (model, GUIDE, optax.adam(0.03), Y, 0, "optimizer: .*0.03"),
        (model, jg.AutoDelta(model), OPT, Y, 0, "guide: jaxguides.guides.delta.AutoDelta"),
        (model, GUIDE, OPT, Y, 1, r"key: \[0, 1\] in the checkpoint, \[0, 0\] in"),
    ]:
        shutil.rmtree(path)
        jg.fit(model_, guide, opt, jax.random.PRNGKey(key), 10, y, checkpoint=path, progress_bar=False)
        _refused(path, "another run: .*" + what)


def test_checkpoint_past_num_steps_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    _run(30, checkpoint=path)
    before = _files(path)
    with pytest.raises(jg.CheckpointError, match="past num_steps"):
        _run(20, checkpoint=path)
    assert _files(path) == before


# ---- failed writes --------------------------------------------------------------------------------
@pytest.mark.parametrize("fail", ["json", "arrays"])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail):
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    before = _files(path / "10")

    async def boom(*args, **kwargs):
        raise OSError("disk full")

    if fail == "json":  # in Orbax's background thread
        monkeypatch.setattr(handlers.JsonCheckpointHandler, "_save_fn", boom)
    else:  # while the arrays are copied off their buffers, before the background write
        monkeypatch.setattr(handlers.StandardCheckpointHandler, "async_save", boom)
    with pytest.raises(Exception, match="disk full"):
        _run(20, checkpoint=path)
    monkeypatch.undo()
    assert _steps(path) == [10] and _files(path / "10") == before
    assert int(jg.load_checkpoint(path)["state/step"]) == 10
    resumed = _run(20, checkpoint=path)  # and the run goes on from it
    np.testing.assert_array_equal(resumed.losses, _run(20).losses)


def test_ctrl_c_while_the_last_save_commits_is_a_fit_interrupted(tmp_path, monkeypatch, uninterrupted):
    # the wait for the last save sits after the steps: a Ctrl-C there still hands back the fit
    real_close = _checkpoint.Checkpointer.close

    def interrupted_close(self):
        real_close(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(_checkpoint.Checkpointer, "close", interrupted_close)
    with pytest.raises(jg.FitInterrupted) as err:
        _run(T, checkpoint=tmp_path / "run.ckpt")
    assert err.value.step == T
    _equal(err.value.state, uninterrupted.state)
    np.testing.assert_array_equal(err.value.losses, uninterrupted.losses)
