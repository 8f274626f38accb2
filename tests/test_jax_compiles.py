"""The JAX backend's jitted ``train_step`` keeps one signature from the first step on
(issue 15, "Speed"): every leaf of ``init_state``'s state is an array of the dtype and
weak type the step returns for it, so ``jax.jit`` traces and compiles the step once and
keeps one entry in its cache. A Python number in the first state (Adam's step count, the
loss scaler's scale and counts) came back from the first step as an array: a second
cache entry, and the second step through JAX's slower dispatch path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb

jax = pytest.importorskip("jax", reason="the jax backend needs JAX: pip install 'symbackprop[jax]'")

ROOT = Path(__file__).resolve().parent.parent
SIZES = [6, 5, 3]


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"X": rng.normal(size=(n, SIZES[0])).astype(np.float32),
            "y": rng.integers(0, SIZES[-1], n)}


def _signature(tree):
    """What jax.jit keys on per leaf: the kind of value (a Python number or an array),
    shape, dtype and weak type."""
    def leaf(a):
        aval = jax.typeof(a)
        return (isinstance(a, jax.Array), aval.shape, aval.dtype, aval.weak_type)
    return jax.tree_util.tree_map(leaf, tree)


class _Compiles:
    """Counts XLA compilations while it is active (JAX's monitoring events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        self.on = False
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, secs, **kwargs):
        if self.on and event == self.EVENT:
            self.count += 1


COMPILES = _Compiles()


@pytest.mark.parametrize("optimizer,precision", [
    ("sgd", None), ("momentum", None), ("adam", None),
    ("sgd", "mixed"), ("adam", "mixed"), ("adam", "bfloat16")])
def test_train_step_keeps_one_signature_and_compiles_once(optimizer, precision):
    kw = {"precision": precision} if precision else {"dtype": "float32"}
    step = sb.compile(sb.models.mlp(SIZES, activation="tanh"), optimizer=optimizer, lr=0.01,
                      backend="jax", **kw)
    m = step.module
    params = m.init_params(0)
    state = m.init_state(params)
    first = _signature(state)
    for leaf in jax.tree_util.tree_leaves(state):
        assert isinstance(leaf, jax.Array), f"{optimizer}/{precision}: init_state holds {leaf!r}"
    COMPILES.on, COMPILES.count = True, 0
    try:
        losses = []
        for i in range(4):
            loss, params, state = m.train_step(params, state, **_batch(seed=i))
            losses.append(float(loss))
            assert _signature(state) == first, (optimizer, precision, i)
    finally:
        COMPILES.on = False
    assert np.all(np.isfinite(losses))
    assert COMPILES.count == 1, f"{optimizer}/{precision}: {COMPILES.count} compilations"
    if hasattr(m.train_step, "_cache_size"):  # jax.jit's dispatch cache (private API)
        assert m.train_step._cache_size() == 1


def test_adam_state_counts_steps_in_int32():
    """Adam's t is an int32 array that counts the steps (its bias correction reads it)."""
    step = sb.compile(sb.models.mlp(SIZES), optimizer="adam", lr=0.01, dtype="float32",
                      backend="jax")
    params = step.init_params(0)
    state = step.init_state(params)
    assert state["t"].dtype == np.int32 and int(state["t"]) == 0
    for i in range(3):
        _, params, state = step.train_step(params, state, **_batch(seed=i))
    assert state["t"].dtype == np.int32 and int(state["t"]) == 3
    for name, w in params.items():
        assert state["m"][name].dtype == w.dtype == np.float32


def test_generated_step_compiles_to_no_more_work_than_a_hand_written_jit(tmp_path):
    """benchmarks/jax_step.py on A at batch 128, programs only (no timing), in a new process
    (it sets JAX's 64-bit mode per workload): the generated step's optimized HLO has the
    hand-written step's matrix products, no transpose, no more copies, every parameter
    buffer donated, and no more flops or bytes."""
    out = tmp_path / "programs.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "jax_step.py"),
                          "--only", "A-b128-f32", "--no-timing", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    p = json.loads(out.read_text())["A-b128-f32"]["programs"]
    hand, gen = p["hand"], p["generated"]
    assert gen["dots"] == hand["dots"] == 11  # 4 forward, 7 backward (no dX)
    assert gen["transposes"] == 0
    assert gen["copies"] <= hand["copies"]
    assert gen["aliased_buffers"] == hand["aliased_buffers"] == 8  # all parameters donated
    assert gen["flops"] <= hand["flops"] * 1.001
    assert gen["bytes_accessed"] <= hand["bytes_accessed"] * 1.001


@pytest.mark.parametrize("precision", [None, "mixed"])
def test_float32_adam_stays_float32_in_64_bit_mode(precision):
    """A float64 JAX module turns on JAX's 64-bit mode for the whole process; Adam's
    corrections 1 - beta**t of the int32 t are then float64, and divided the float32
    moments into float64 parameters after the first step (a second compilation): they are
    cast to the moments' dtype."""
    kw = {"precision": precision} if precision else {"dtype": "float32"}
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        step = sb.compile(sb.models.mlp(SIZES), optimizer="adam", lr=0.01, backend="jax", **kw)
        m = step.module
        params = m.init_params(0)
        state = m.init_state(params)
        first = _signature((params, state))
        for i in range(3):
            _, params, state = m.train_step(params, state, **_batch(seed=i))
            assert _signature((params, state)) == first, i
        assert {np.dtype(w.dtype) for w in params.values()} == {np.dtype(np.float32)}
    finally:
        jax.config.update("jax_enable_x64", before)
