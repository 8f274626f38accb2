"""The ``cupy`` backend (issue 15): NumPy's memory-planned code written against CuPy.

These tests run without a GPU (none is needed by ``make test``), so what they can check
is stated plainly:

* the generated modules pass ruff and import only ``cupy``/``cupyx`` (on the AST), and
  none of the NumPy constructs the backend rewrites is left;
* every ``cp.X``/``cupyx.X`` name the modules use exists in CuPy: in the real ``cupy``
  module when it is installed (it imports without a GPU), and always in
  ``tests/cupy_api.txt``, the names of CuPy 14.2.0's API written by ``tools/cupy_api.py``;
* the modules' VALUES, with **NumPy standing in for CuPy** (a test double:
  :func:`numpy_as_cupy` makes ``import cupy as cp`` give NumPy, made as strict as CuPy
  where the code could tell (:func:`strict_numpy`), and ``cupyx`` a stub of NumPy's and
  SciPy's functions of the same names), against the numpy backend: the op harness, the
  lessons' models and training steps. This checks the generated program
  (its statements, its planner's buffers, its rewrites), not CuPy's kernels; running it
  on a GPU is ``benchmarks/gpu_check.py`` (docs/performance.md, "GPU checks").
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import test_ops_grad as harness
from standalone import assert_ruff_clean
from test_backends import MODELS, _imported

import symbackprop as sb
from symbackprop.cli import main
from symbackprop.codegen import cupy_backend
from symbackprop.ops import registry

API = Path(__file__).with_name("cupy_api.txt")


def _generator_methods() -> set[str]:
    return {ln.rsplit(".", 1)[1] for ln in API.read_text().splitlines()
            if ln.startswith("cupy.random.Generator.")}


def strict_numpy() -> types.ModuleType:
    """NumPy as the test double's ``cupy``, made as strict as CuPy where the generated
    code could tell: reductions (``prod``, ``sum``, ...) take only arrays (CuPy's call
    ``a.prod()``: ``cp.prod((2, 3))`` fails on a GPU; NumPy scalars pass, as CuPy's
    0-d arrays), and ``random.default_rng`` gives a generator with only the methods of
    CuPy's ``Generator`` (tests/cupy_api.txt: no ``normal``)."""
    cp = types.ModuleType("cupy")
    cp.__dict__.update({k: v for k, v in vars(np).items() if not k.startswith("__")})
    cp.__spec__ = np.__spec__  # importlib.util.find_spec("cupy"): found

    def arrays_only(name):
        f = getattr(np, name)

        def call(a, *args, **kw):
            if not isinstance(a, (np.ndarray, np.generic)):
                raise TypeError(f"cupy.{name} takes an array, not {type(a).__name__} "
                                f"(CuPy calls a.{name}())")
            return f(a, *args, **kw)
        return call

    for name in ("prod", "sum", "mean", "max", "min", "var", "std", "argmax", "argmin",
                 "cumsum", "all", "any"):
        setattr(cp, name, arrays_only(name))
    methods = _generator_methods()

    class Generator:
        """CuPy's Generator, by its methods' names: NumPy's draws behind them."""

        def __init__(self, seed):
            self._rng = np.random.default_rng(seed)

        def __getattr__(self, name):
            if name not in methods:
                raise AttributeError(f"cupy.random.Generator has no {name!r}")
            return getattr(self._rng, name)

    cp.random = types.SimpleNamespace(
        Generator=Generator,
        default_rng=lambda seed=None: seed if isinstance(seed, Generator) else Generator(seed))
    # one CUDA device (sb.compile and the script ask first); the tests of a machine without
    # one replace getDeviceCount (no_driver)
    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    return cp


class CUDARuntimeError(RuntimeError):
    """CuPy's error of a CUDA call (cupy_backends.cuda.api.runtime), a RuntimeError."""


def no_driver():
    """getDeviceCount of a machine without a CUDA driver, as CuPy raises it (a second line
    added: the one-line messages keep the first)."""
    raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient "
                           "for CUDA runtime version\n(more detail)")


NO_DRIVER = ("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
             "runtime version")


@contextlib.contextmanager
def numpy_as_cupy():
    """The test double: while active, ``import cupy`` is NumPy (:func:`strict_numpy`) and
    ``import cupyx`` a stub whose ``errstate`` is NumPy's and ``scipy.special`` SciPy's.
    Generated cupy modules then run on the CPU, computing with NumPy what they would
    compute with CuPy."""
    import scipy.special

    cupyx = types.ModuleType("cupyx")
    cupyx.errstate = np.errstate
    cupyx.scipy = types.SimpleNamespace(special=scipy.special)
    saved = {k: sys.modules.get(k) for k in ("cupy", "cupyx", "cupyx.scipy",
                                               "cupyx.scipy.special")}
    sys.modules.update({"cupy": strict_numpy(), "cupyx": cupyx, "cupyx.scipy": cupyx.scipy,
                        "cupyx.scipy.special": scipy.special})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _compile(g, **kw):
    with numpy_as_cupy():
        return sb.compile(g, backend="cupy", **kw)


# -- values, NumPy standing in for CuPy ----------------------------------------------------
@pytest.mark.parametrize(("name", "case"), harness.ALL_CASES)
def test_op_matches_numpy_backend(name, case):
    """The op harness: forward outputs, loss and gradients (float64) of the cupy module,
    run with NumPy standing in for CuPy, equal the numpy backend's."""
    b, ref = harness.compiled(name, case)
    fn = _compile(b.graph, of="L", wrt=b.wrt)
    out, want = fn.forward(**b.arrays), ref.forward(**b.arrays)
    for k in want:
        np.testing.assert_allclose(out[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)
    loss, grads = fn.value_and_grad(**b.arrays)
    ref_loss, ref_grads = ref.value_and_grad(**b.arrays)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-14)
    for k in ref_grads:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize(("name", "case"), harness.ALL_CASES[::7])
def test_float32_stays_float32(name, case):
    b, _ = harness.compiled(name, case)
    loss, grads = _compile(b.graph, of="L", wrt=b.wrt, dtype="float32").value_and_grad(**b.arrays)
    assert np.asarray(loss).dtype == np.float32
    assert all(np.asarray(v).dtype == np.float32 for v in grads.values())


def _digits(n=256):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


@pytest.mark.parametrize(("optimizer", "precision", "dtype", "checkpoint"), [
    ("sgd", None, "float64", "none"), ("adam", None, "float32", "none"),
    ("momentum", None, "float64", "sqrt"), ("adam", "mixed", "float32", "none")])
def test_train_step_matches_numpy(optimizer, precision, dtype, checkpoint):
    """The digits MLP: ten steps of the cupy training step (in place, flat buffers,
    workspace; mixed precision's loss scaling) from the numpy step's initial parameters
    give the numpy step's losses and parameters."""
    g = sb.models.mlp([64, 32, 10])
    X, y = _digits()
    kw = {"optimizer": optimizer, "lr": 0.05, "dtype": dtype, "precision": precision,
              "checkpoint": checkpoint}
    ref, cp_step = sb.compile(g, **kw), _compile(g, **kw)
    p_ref = ref.init_params(0)
    p_cp = cp_step.init_params(0)
    for k in p_ref:  # the same start (CuPy's generator draws other numbers than NumPy's)
        p_cp[k][...] = p_ref[k]
    s_ref, s_cp = ref.init_state(p_ref), cp_step.init_state(p_cp)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    with numpy_as_cupy():
        for i in range(10):
            batch = {"X": X[32 * (i % 8):32 * (i % 8 + 1)], "y": y[32 * (i % 8):32 * (i % 8 + 1)]}
            want = ref.train_step(p_ref, s_ref, **batch)
            assert cp_step.train_step(p_cp, s_cp, **batch) == pytest.approx(want, rel=rtol)
    for k in p_ref:
        np.testing.assert_allclose(p_cp[k], p_ref[k], rtol=rtol, atol=rtol, err_msg=k)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_init_params_and_a_step_run_with_cupys_generator(optimizer):
    """init_params draws with CuPy's Generator (standard_normal, uniform: the double has
    only CuPy's methods), a CNN's workspace sizes its buffers with math.prod (CuPy's prod
    takes no tuple), and a step from those parameters runs; He normal's spread is
    sqrt(2 / fan_in)."""
    g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(8,), classes=3)
    step = _compile(g, optimizer=optimizer, lr=0.01)
    with numpy_as_cupy():
        params = step.init_params(0)
        state = step.init_state(params)
        rng = np.random.default_rng(0)
        loss = step.train_step(params, state, X=rng.standard_normal((4, 1, 6, 6)),
                               y=np.array([0, 1, 2, 0]))
    assert np.isfinite(loss) and all(v.dtype == np.float64 for v in params.values())
    big = _compile(sb.models.mlp([400, 300, 3]), optimizer="sgd").init_params(1)
    assert np.std(big["W1"]) == pytest.approx(np.sqrt(2 / 400), rel=0.02)


def test_flat_buffer_check_of_cupy_finds_views_and_refuses_others():
    """The cupy version of _flat_base (no host addresses): consecutive views of one buffer
    are found, views out of order or of another buffer are not."""
    from symbackprop.codegen.runtime import cupy_ops

    flat = np.arange(10.0)
    views = {"a": flat[:6].reshape(2, 3), "b": flat[6:]}
    assert cupy_ops._flat_base(views) is flat
    assert cupy_ops._flat_base({"b": flat[6:], "a": flat[:6].reshape(2, 3)}) is None
    assert cupy_ops._flat_base({"a": flat[:6].reshape(2, 3), "b": flat[5:9]}) is None
    assert cupy_ops._flat_base({"a": np.zeros((2, 3)), "b": flat[6:]}) is None


# -- the modules' text ----------------------------------------------------------------------
def _special_source() -> str:
    """A module calling functions NumPy has no ufunc for (erf, erfc): cupyx.scipy.special's
    in the cupy module. The two ops are declared for this test alone, then removed."""
    names = ("gelu_erf_cupy_test", "erfc_cupy_test")
    try:
        gelu = sb.elementwise(names[0], lambda x: x * (1 + sp.erf(x / sp.sqrt(2))) / 2)
        erfc = sb.elementwise(names[1], sp.erfc)
        g = sb.Graph(name="special")
        w = g.param("w", shape=(3,))
        g.output("L", sb.sum(gelu(w) + erfc(w) + sb.softplus(w)))
        return sb.source(g, backend="cupy")
    finally:
        for name in names:
            registry._OPS.pop(name, None)


def _files() -> list[tuple[str, str]]:
    files = []
    for name, g in MODELS.items():
        for dtype in ("float64", "float32"):
            for optimize in (True, False):
                files.append((f"{name}_{dtype}_{optimize}.py",
                              sb.source(g, dtype=dtype, optimize=optimize, backend="cupy")))
        for opt in ("sgd", "adam"):
            files.append((f"{name}_step_{opt}.py",
                          sb.train_step(g, optimizer=opt, backend="cupy")))
    g = sb.models.mlp([6, 5, 3])
    files.append(("mixed_step.py", sb.train_step(g, optimizer="adam", precision="mixed",
                                                 backend="cupy")))
    cnn = sb.models.cnn((1, 6, 6), channels=(2, 3), hidden=(4,), classes=3, batch_norm=True,
                        dropout=0.1)
    files += [("cnn.py", sb.source(cnn, backend="cupy")),
              ("cnn_step.py", sb.train_step(cnn, optimizer="adam", backend="cupy"))]
    tr = sb.models.transformer_classifier(vocab=12, seq_len=6, d_model=8, heads=2, d_ff=16,
                                          layers=1, classes=2)
    files.append(("transformer_step.py", sb.train_step(tr, optimizer="adam", backend="cupy")))
    files.append(("special.py", _special_source()))
    return files


@functools.cache
def _all_files() -> tuple:
    return tuple(_files())


def test_modules_pass_ruff_and_import_only_cupy(tmp_path):
    for fname, src in _all_files():
        assert _imported(src) <= {"cupy", "cupyx"} and "cupy" in _imported(src), fname
        left = [s for s in cupy_backend.LEFT_OUT if s in src]
        assert not left, (fname, left)
        assert re.search(r"  # dL/d\w+ via ", src), fname  # one statement per node
        (tmp_path / fname).write_text(src)
    assert "return cupyx.scipy.special.erfc(x)" in dict(_all_files())["special.py"]
    assert_ruff_clean(tmp_path, *[f for f, _ in _all_files()])


def _used(src: str) -> set[str]:
    """Every dotted name rooted at cp or cupyx that a module reads (cp -> cupy)."""
    out = set()
    for node in ast.walk(ast.parse(src)):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if parts and isinstance(node, ast.Name) and node.id in ("cp", "cupyx"):
            out.add(".".join([{"cp": "cupy"}.get(node.id, node.id), *reversed(parts)]))
    return out


def _every_name() -> set[str]:
    names = set()
    for _, src in _all_files():
        names |= _used(src)
    return names


def test_names_exist_in_the_stored_cupy_api():
    """Against tests/cupy_api.txt (CuPy 14.2.0, tools/cupy_api.py): every name, and each
    prefix of it (cupy.add of cupy.add.at)."""
    listed = {ln for ln in API.read_text().splitlines() if not ln.startswith("#")}
    used = _every_name()
    assert {"cupy.matmul", "cupy.dot", "cupy.copyto", "cupy.asarray"} <= used
    missing = sorted(n for n in used if n not in listed)
    assert not missing, missing


def test_names_exist_in_cupy():
    """Against the real cupy module (it imports without a GPU)."""
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed (pip install 'symbackprop[cupy]': cupy-cuda12x)")
    import cupy
    import cupyx
    import cupyx.scipy.special

    roots = {"cupy": cupy, "cupyx": cupyx}
    missing = []
    for name in sorted(_every_name()):
        root, *parts = name.split(".")
        try:
            functools.reduce(getattr, parts, roots[root])
        except AttributeError:
            missing.append(name)
    assert not missing, missing


@pytest.mark.parametrize("precision", [None, "mixed"])
def test_cupy_module_is_numpy_module_with_the_declared_rewrites(precision):
    """The cupy module is the numpy module (same planner, same statements) with the alias
    changed and REWRITES applied: nothing else differs (the MLP has no einsum, the one op
    whose table entry differs), and the mixed NumPy docstring's sentence on float16 being
    slow on CPUs (mixed.precision_text), which the GPU's module has not."""
    g = sb.models.mlp([6, 5, 3])
    kw = {"optimizer": "adam", "dtype": "float32", "precision": precision}
    np_src, cp_src = sb.train_step(g, **kw), sb.train_step(g, backend="cupy", **kw)
    slow = re.compile(r" NumPy's\s+float16\s+is emulated on CPUs.*?\(docs/backends\.md\)\.",
                      re.DOTALL)
    assert (precision == "mixed") == bool(slow.search(np_src)), np_src[:1500]
    np_src = slow.sub("", np_src)
    as_cupy = np_src.replace("import numpy as np", "import cupy as cp").replace(
        "Needs only NumPy.", "Needs only CuPy.")
    assert cupy_backend.BACKEND.finish(as_cupy) == cp_src


# -- bad input --------------------------------------------------------------------------------
def test_cupy_missing_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cupy" else real(name, *a))
    with pytest.raises(sb.CodegenError) as e:
        sb.compile(sb.models.mlp([4, 3, 2]), backend="cupy")
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'symbackprop[cupy]'" in msg and "cupy-cuda12x" in msg
    # writing the source needs no CuPy
    assert "import cupy as cp" in sb.source(sb.models.mlp([4, 3, 2]), backend="cupy")


@pytest.mark.parametrize(("count", "says"), [(no_driver, NO_DRIVER),
                                             (lambda: 0, "it finds no CUDA device")])
def test_cupy_without_a_device_is_one_line_naming_numpy(count, says):
    """CuPy imports without a GPU (or its driver) and fails at its first allocation with
    CUDA's traceback: compile asks for a device first and says, in one line, why there is
    none and to use backend='numpy'. Writing the source needs no device."""
    g = sb.models.mlp([4, 3, 2])
    with numpy_as_cupy():
        sys.modules["cupy"].cuda.runtime.getDeviceCount = count
        for kw in ({}, {"optimizer": "sgd"}, {"optimizer": "adam", "precision": "mixed"}):
            with pytest.raises(sb.CodegenError) as e:
                sb.compile(g, backend="cupy", **kw)
            assert str(e.value) == (f"backend 'cupy' runs on a CUDA GPU, and CuPy sees no CUDA "
                                    f"device here ({says}); on this machine use "
                                    "backend='numpy' (the same code, on the CPU)."), kw
        assert "import cupy as cp" in sb.source(g, backend="cupy")
        assert "import cupy as cp" in sb.train_step(g, optimizer="sgd", backend="cupy")
        assert "import cupy as cp" in sb.training_script(g, backend="cupy")


def real_cupy():
    """The installed CuPy and, where it sees no CUDA device, what its getDeviceCount raises
    (the first line), else None; skips where CuPy is not installed."""
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed (pip install 'symbackprop[cupy]': cupy-cuda12x)")
    import cupy

    try:
        return cupy, None if cupy.cuda.runtime.getDeviceCount() else "it finds no CUDA device"
    except RuntimeError as e:  # CUDARuntimeError
        return cupy, str(e).splitlines()[0]


def test_real_cupy_compiles_where_it_sees_a_device_and_refuses_in_one_line_elsewhere():
    """With the installed CuPy (no double): on a machine without a GPU (make test's), the
    audit's ``sb.compile(..., backend='cupy').init_params(0)`` raised CUDA's traceback."""
    cupy, problem = real_cupy()
    g = sb.models.mlp([8, 16, 3])
    if problem is None:  # a GPU: the step runs on it
        params = sb.compile(g, optimizer="sgd", backend="cupy").init_params(0)
        assert all(isinstance(w, cupy.ndarray) for w in params.values())
        return
    with pytest.raises(sb.CodegenError) as e:
        sb.compile(g, optimizer="sgd", backend="cupy")
    assert "\n" not in str(e.value) and f"CuPy sees no CUDA device here ({problem})" in str(e.value)
    assert "backend='numpy'" in str(e.value)


def test_cli_codegen_and_train_script(tmp_path, capsys):
    out = tmp_path / "m.py"
    assert main(["codegen", "mlp:4-3-2", "--backend", "cupy", "-o", str(out)]) == 0
    assert "import cupy as cp" in out.read_text()
    script = tmp_path / "train.py"  # the training script: tests/test_cupy_script.py
    assert main(["train-script", "mlp:4-3-2", "--backend", "cupy", "-o", str(script)]) == 0
    assert "import cupy as cp" in script.read_text()


@pytest.mark.parametrize("write", [
    lambda g: sb.train_step(g, backend="cupy", precision="bfloat16"),
    lambda g: sb.training_script(g, backend="cupy", precision="bfloat16")])
def test_bfloat16_on_cupy_names_cupy(write):
    with pytest.raises(ValueError, match=r"\(jax, torch\); CuPy has none\. On CuPy use "
                                         r"precision 'mixed'"):
        write(sb.models.mlp([4, 3, 2]))
