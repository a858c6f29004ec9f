"""Checkpoints: the save/load round trip, fit's resume bit for bit, refusal of
bad files (left as they were), and atomic writes."""

import hashlib
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import jaxguides as jg
from jaxguides.loop import checkpoint as _checkpoint
from jaxguides.loop import fit as fit_module


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
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _keys_equal(a, b):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


@pytest.fixture(scope="module")
def uninterrupted():
    return _run(T)


# ---- save / load ------------------------------------------------------------------------------
def test_round_trip(tmp_path):
    state = _run(5).state
    payload = {"state": state, "losses": np.arange(5, dtype=np.float32), "note": "x", "n": 3}
    path = tmp_path / "a.ckpt"
    jg.save_checkpoint(path, payload)
    back = jg.load_checkpoint(str(path))
    assert isinstance(back["state"], jg.SVIState)
    _equal(back["state"], state)  # params keep their static site description (treedef)
    assert back["state"].params.sites == state.params.sites
    np.testing.assert_array_equal(back["losses"], payload["losses"])
    assert back["note"] == "x" and back["n"] == 3
    # the loaded params work with a new guide built with the same arguments
    loss = jg.elbo_loss(model, jg.AutoNormal(model))
    key = jax.random.PRNGKey(1)
    assert loss(back["state"].params, key, Y) == loss(state.params, key, Y)
    assert os.listdir(tmp_path) == ["a.ckpt"]


def test_round_trip_typed_keys(tmp_path):
    key = jax.random.key(3)
    jg.save_checkpoint(tmp_path / "k.ckpt", {"key": key, "keys": jax.random.split(key, 4)})
    back = jg.load_checkpoint(tmp_path / "k.ckpt")
    _keys_equal(back["key"], key)
    _keys_equal(back["keys"], jax.random.split(key, 4))


# ---- fit writes, resumes ----------------------------------------------------------------------
def test_fit_writes_checkpoint_every_n_steps(tmp_path, monkeypatch, uninterrupted):
    saved = []
    real_save = fit_module.write_fit_checkpoint

    def spy(path, state, losses, skipped, *run):
        saved.append((int(state.step), len(losses)))
        real_save(path, state, losses, skipped, *run)

    monkeypatch.setattr(fit_module, "write_fit_checkpoint", spy)
    path = tmp_path / "run.ckpt"
    result = _run(T, checkpoint=path, checkpoint_every=25)
    assert [s for s, _ in saved] == [25, 50, 75, 100, 120]
    assert all(step == n for step, n in saved)  # the losses so far go with the state
    on_disk = jg.load_checkpoint(path)
    _equal(on_disk["state"], result.state)
    np.testing.assert_array_equal(on_disk["losses"], result.losses)
    # writing checkpoints changes nothing in the fit itself
    np.testing.assert_array_equal(result.losses, uninterrupted.losses)
    _equal(result.state, uninterrupted.state)
    assert os.listdir(tmp_path) == ["run.ckpt"]


@pytest.mark.parametrize("first", [1, 37, 60])
def test_resume_is_bit_for_bit(tmp_path, first, uninterrupted):
    path = tmp_path / "run.ckpt"
    part = _run(first, checkpoint=path)
    assert int(jg.load_checkpoint(path)["state"].step) == first
    np.testing.assert_array_equal(part.losses, uninterrupted.losses[:first])
    resumed = _run(T, checkpoint=path)
    np.testing.assert_array_equal(resumed.losses, uninterrupted.losses)
    _equal(resumed.state, uninterrupted.state)
    _equal(resumed.params, uninterrupted.params)
    # and again: a finished run resumes to itself without a step
    again = _run(T, checkpoint=path)
    np.testing.assert_array_equal(again.losses, uninterrupted.losses)
    _equal(again.state, uninterrupted.state)


def test_killed_run_resumes_bit_for_bit(tmp_path, monkeypatch, uninterrupted):
    """A run killed mid-way (here: KeyboardInterrupt in the 4th chunk) loses at most
    checkpoint_every steps, and re-running the same command ends where an
    uninterrupted run does."""
    path = tmp_path / "run.ckpt"
    real_run, calls = fit_module.run_chunk, []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(fit_module, "run_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        _run(T, checkpoint=path, checkpoint_every=20, chunk_size=10)
    at = int(jg.load_checkpoint(path)["state"].step)
    assert at == 20  # 3 chunks of 10 ran; the last checkpoint was at step 20
    monkeypatch.setattr(fit_module, "run_chunk", real_run)
    resumed = _run(T, checkpoint=path, checkpoint_every=20, chunk_size=10)
    np.testing.assert_array_equal(resumed.losses, uninterrupted.losses)
    _equal(resumed.state, uninterrupted.state)


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
    on_disk = jg.load_checkpoint(path)
    _equal(on_disk["state"], info.value.state)
    assert int(on_disk["state"].step) == info.value.step
    np.testing.assert_array_equal(on_disk["losses"], info.value.losses)


# ---- refusals ---------------------------------------------------------------------------------
def _refused(path, match, **kwargs):
    before = path.read_bytes()
    with pytest.raises(jg.CheckpointError, match=match) as info:
        _run(T, checkpoint=path, **kwargs)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert path.read_bytes() == before  # left as it was
    return info.value


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    raw = path.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 30, 0):
        path.write_bytes(raw[:cut])
        _refused(path, "truncated|header")


def test_corrupted_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    raw = bytearray(path.read_bytes())
    for where in (len(raw) - 5, len(raw) // 2, 100, 3):  # payload, digest, magic
        flipped = bytearray(raw)
        flipped[where] ^= 0x01
        path.write_bytes(bytes(flipped))
        _refused(path, "checksum|header|corrupted")
        with pytest.raises(jg.CheckpointError):
            jg.load_checkpoint(path)


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(pickle.dumps({"state": 1}))
    _refused(path, "not a jaxguides checkpoint")
    jg.save_checkpoint(path, {"something": "else"})
    _refused(path, "does not hold a fit state")
    with pytest.raises(jg.CheckpointError, match="cannot be read"):
        jg.load_checkpoint(tmp_path / "missing.ckpt")


def test_checkpoint_of_another_version_is_refused(tmp_path):
    """A whole file (checksum fine) whose pickle no longer loads, e.g. a state class
    whose fields changed between versions: refused, named, left as it was."""
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    raw = path.read_bytes()
    data = raw[raw.index(b"\n", len(_checkpoint._MAGIC)) + 1 :]
    stale = data.replace(b"SVIState", b"SVIStatX")  # a class this version does not have
    assert stale != data
    path.write_bytes(_checkpoint._MAGIC + hashlib.sha256(stale).hexdigest().encode() + b"\n" + stale)
    _refused(path, "another version of jaxguides")


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
        jg.fit(
            model_, guide, opt, jax.random.PRNGKey(key), 10, y, checkpoint=path.with_suffix(".b"), progress_bar=False
        )
        os.replace(path.with_suffix(".b"), path)
        _refused(path, "another run: .*" + what)


def test_checkpoint_without_a_run_record_is_refused(tmp_path):
    """A checkpoint of an older jaxguides (no record of its run) is refused, not trusted."""
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    payload = jg.load_checkpoint(path)
    del payload["run"]
    jg.save_checkpoint(path, payload)
    _refused(path, "no record of the run that wrote it")


def test_checkpoint_past_num_steps_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    _run(30, checkpoint=path)
    before = path.read_bytes()
    with pytest.raises(jg.CheckpointError, match="past num_steps"):
        _run(20, checkpoint=path)
    assert path.read_bytes() == before


# ---- atomic writes ------------------------------------------------------------------------------
@pytest.mark.parametrize("fail", ["pickle", "replace", "fsync"])
def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail):
    path = tmp_path / "run.ckpt"
    _run(10, checkpoint=path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    target = {
        "pickle": (_checkpoint.pickle, "dumps"),
        "replace": (_checkpoint.os, "replace"),
        "fsync": (_checkpoint.os, "fsync"),
    }[fail]
    monkeypatch.setattr(*target, boom)
    with pytest.raises(OSError, match="disk full"):
        _run(20, checkpoint=path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.ckpt"]  # no temp file left behind
    assert int(jg.load_checkpoint(path)["state"].step) == 10
