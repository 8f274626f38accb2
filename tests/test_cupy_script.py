"""The CuPy training script (issue 15): ``sb.training_script(g, backend="cupy")`` and
``symbackprop train-script --backend cupy``.

There is no GPU here, so, as tests/test_cupy_backend.py does, the script runs with
**NumPy standing in for CuPy** (its test double :func:`numpy_as_cupy`, with CuPy's
``asnumpy``): this checks the program that is generated (which lines run on the device,
which on the host, the transfers between them, the initial draws, the checkpoints),
not CuPy's kernels. With the double, the cupy script computes exactly what the NumPy
script computes, so the tests ask for the NumPy script's epoch lines, metrics and
checkpoints bit for bit. The names the script calls are checked against CuPy's API
(tests/cupy_api.txt, and the real module when it is installed: it imports without a
GPU). The GPU run is benchmarks/gpu_check.py (docs/performance.md, "GPU checks").
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from standalone import assert_ruff_clean
from test_backends import _imported
from test_cupy_backend import API, NO_DRIVER, _used, no_driver, numpy_as_cupy, real_cupy

import symbackprop as sb
from symbackprop.cli import main as cli
from symbackprop.errors import CodegenError

HOST_START = "class InputError"  # the first line of the host's runtime in every script


class Device(np.ndarray):
    """An array on the test double's GPU: as CuPy's, it refuses host (NumPy) arrays in its
    ufuncs and in assignments into it, so a missing cp.asarray fails here as on a GPU;
    a missing cp.asnumpy fails in the checkpoint (:func:`fake_cupy` checks np.savez)."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        if any(_host(a) for a in (*inputs, *(out or ()))):
            raise TypeError(f"{ufunc.__name__}: a host array with a device array (CuPy "
                            "refuses the implicit copy)")
        inputs = tuple(a.view(np.ndarray) if isinstance(a, Device) else a for a in inputs)
        if out is not None:
            kw["out"] = tuple(o.view(np.ndarray) if isinstance(o, Device) else o for o in out)
        result = getattr(ufunc, method)(*inputs, **kw)
        return out[0] if out is not None and len(out) == 1 else _device(result)

    def __setitem__(self, key, value):
        if _host(value):
            raise TypeError("a host array assigned into a device array (CuPy: cp.asarray it)")
        super().__setitem__(key, value)


def _host(a) -> bool:
    return type(a) is np.ndarray and a.ndim > 0


def _device(r):
    return r.view(Device) if type(r) is np.ndarray else r


def _on_device(f):
    @functools.wraps(f)
    def call(*args, **kw):
        return _device(f(*args, **kw))
    return call


def _namespace(module=None) -> types.SimpleNamespace:
    """A submodule of the double (cp.linalg, cp.lib.stride_tricks): its functions on Device."""
    names = {} if module is None else {k: _on_device(f) for k, f in vars(module).items()
                                       if callable(f) and not k.startswith("_")}
    return types.SimpleNamespace(**names)


@contextlib.contextmanager
def fake_cupy():
    """tests/test_cupy_backend.py's double, stricter about where arrays are: what its
    functions and its generator make is a :class:`Device` array, ``asnumpy`` brings one
    back to the host, ``random.default_rng`` refuses a NumPy Generator (CuPy would seed
    from it and fail) and ``np.savez`` refuses device arrays (CuPy's cannot be read as
    NumPy's)."""
    savez = np.savez

    def host_savez(f, **arrays):
        on_gpu = [k for k, a in arrays.items() if isinstance(a, Device)]
        assert not on_gpu, f"device arrays written to a checkpoint: {on_gpu}"
        return savez(f, **arrays)

    with numpy_as_cupy():
        cp = sys.modules["cupy"]
        for name, f in list(vars(cp).items()):
            if callable(f) and not isinstance(f, (type, np.ufunc)) and not name.startswith("_"):
                setattr(cp, name, _on_device(f))
        cp.linalg, cp.lib = _namespace(np.linalg), _namespace()
        cp.lib.stride_tricks = _namespace(np.lib.stride_tricks)
        cp.asnumpy = lambda a: np.asarray(a).view(np.ndarray)
        base = cp.random.Generator

        class Generator(base):
            def __getattr__(self, name):
                return _on_device(base.__getattr__(self, name))

        def default_rng(seed=None):
            if isinstance(seed, Generator):
                return seed
            if isinstance(seed, np.random.Generator):
                raise TypeError("cupy.random.default_rng cannot seed from a NumPy Generator")
            return Generator(seed)

        cp.random = types.SimpleNamespace(Generator=Generator, default_rng=default_rng)
        np.savez = host_savez
        try:
            yield
        finally:
            np.savez = savez


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(src: str, path: Path, argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run a script's main(argv) in this process; its exit status and epoch lines (the
    seconds left out)."""
    path.write_text(src)
    capsys.readouterr()
    with fake_cupy():
        status = _load(path).main(argv)
    out = capsys.readouterr().out.splitlines()
    return status, [re.sub(r"\s+[\d.]+s$", "", ln) for ln in out if not ln.startswith("done")]


def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    x, y = _arrays(a), _arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


@functools.cache
def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:260] / 16.0, y[:260]


@pytest.fixture
def digits(tmp_path) -> Path:
    X, y = _digits()
    path = tmp_path / "digits.npz"
    np.savez(path, X=X[:200], y=y[:200], X_test=X[200:], y_test=y[200:])
    return path


@pytest.mark.parametrize(("kw", "flags"), [
    ({"optimizer": "adam", "lr": 0.01}, ["--metrics", "m.csv", "--log-grad-norms"]),
    ({"optimizer": "momentum", "lr": 0.05, "dtype": "float32"}, []),
    ({"optimizer": "adam", "lr": 0.01, "precision": "mixed"}, ["--metrics", "m.csv"])])
def test_trains_as_the_numpy_script(tmp_path, digits, capsys, kw, flags):
    """The digits MLP, 3 epochs: the cupy script's epoch lines (loss, test accuracy,
    mixed precision's underflow line), --metrics rows and checkpoint (parameters,
    optimizer state, loss scaler, progress) are the NumPy script's, bit for bit: its
    initial parameters are NumPy's draws and its batches NumPy's order."""
    g = sb.models.mlp([64, 32, 10])
    runs = {}
    for backend in ("numpy", "cupy"):
        d = tmp_path / backend
        d.mkdir()
        src = sb.training_script(g, backend=backend, epochs=3, batch_size=32, seed=3, **kw)
        argv = ["--data", str(digits), "--out", str(d / "c.npz"),
                *[str(d / f) if f.endswith(".csv") else f for f in flags]]
        runs[backend] = _run(src, d / "train.py", argv, capsys)
        assert runs[backend][0] == 0
    assert runs["cupy"][1] == runs["numpy"][1] and len(runs["numpy"][1]) >= 3
    _assert_same_checkpoint(tmp_path / "cupy" / "c.npz", tmp_path / "numpy" / "c.npz")
    if flags:
        assert (tmp_path / "cupy" / "m.csv").read_text() == \
            (tmp_path / "numpy" / "m.csv").read_text()
    if "precision" in kw:
        assert any("float16 gradients" in ln for ln in runs["cupy"][1])


# -- dropout: the NumPy script's masks, drawn on the host ---------------------------------------
def _dropout_cnn(batch_norm=False):
    return sb.models.cnn((1, 6, 6), channels=(2,), hidden=(8,), classes=3, dropout=0.25,
                         batch_norm=batch_norm)


@pytest.fixture
def images(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "img.npz"
    np.savez(path, X=rng.standard_normal((40, 1, 6, 6)), y=rng.integers(0, 3, 40),
             X_test=rng.standard_normal((12, 1, 6, 6)), y_test=rng.integers(0, 3, 12))
    return path


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_resume_is_bit_for_bit(tmp_path, images, capsys, dropout):
    """A CNN with batch norm (running statistics on the GPU, saved with cp.asnumpy), and
    with dropout (the host generator's state in the checkpoint, so the resumed run draws
    the masks the whole run draws): 2 epochs with --checkpoint-every 1, then --resume to
    4, give the uninterrupted 4-epoch run's checkpoint, which is the NumPy script's; a
    checkpoint of either script resumes in the other."""
    g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(8,), classes=3, batch_norm=True,
                      dropout=dropout)
    src = sb.training_script(g, optimizer="adam", lr=0.01, backend="cupy", batch_size=16)
    ref = sb.training_script(g, optimizer="adam", lr=0.01, batch_size=16)
    base = ["--data", str(images)]

    def run(script, name, *args):
        status, lines = _run(script, tmp_path / f"{name}.py",
                             [*base, *args, "--out", str(tmp_path / f"{name}.npz")], capsys)
        assert status == 0
        return lines

    run(src, "full", "--epochs", "4")
    assert len(run(src, "half", "--epochs", "2", "--checkpoint-every", "1")) == 2
    assert len(run(src, "resumed", "--epochs", "4", "--resume", str(tmp_path / "half.npz"))) == 2
    run(ref, "numpy", "--epochs", "4")
    run(ref, "numpy_half", "--epochs", "2")
    run(ref, "cupy_in_numpy", "--epochs", "4", "--resume", str(tmp_path / "half.npz"))
    run(src, "numpy_in_cupy", "--epochs", "4", "--resume", str(tmp_path / "numpy_half.npz"))
    for name in ("resumed", "numpy", "cupy_in_numpy", "numpy_in_cupy"):
        _assert_same_checkpoint(tmp_path / f"{name}.npz", tmp_path / "full.npz")
    full = _arrays(tmp_path / "full.npz")
    assert any(k.startswith("buffers/running/") for k in full)
    if dropout:
        assert str(_arrays(tmp_path / "half.npz")["buffers/rng"]) != str(full["buffers/rng"])


@pytest.mark.parametrize("kw", [{}, {"precision": "mixed"}])
def test_dropout_trains_as_the_numpy_script(tmp_path, images, capsys, kw):
    """A CNN with dropout, 3 epochs: the cupy script's masks are the NumPy script's
    generator's draws (HostDraws, copied to the GPU), so its epoch lines, --metrics rows
    (the gradient norms' masks too) and checkpoint, the dropout generator's state
    included, are the NumPy script's bit for bit; and dropout is on (another generator
    state, or p=0, trains otherwise)."""
    runs = {}
    for name, g, backend in (("numpy", _dropout_cnn(), "numpy"), ("cupy", _dropout_cnn(), "cupy"),
                             ("plain", sb.models.cnn((1, 6, 6), channels=(2,), hidden=(8,),
                                                     classes=3), "cupy")):
        d = tmp_path / name
        d.mkdir()
        src = sb.training_script(g, optimizer="adam", lr=0.01, backend=backend, epochs=3,
                                 batch_size=16, **kw)
        runs[name] = _run(src, d / "train.py", ["--data", str(images), "--out", str(d / "c.npz"),
                                                "--metrics", str(d / "m.csv")], capsys)
        assert runs[name][0] == 0
    assert runs["cupy"][1] == runs["numpy"][1] and len(runs["numpy"][1]) >= 3
    assert (tmp_path / "cupy" / "m.csv").read_text() == (tmp_path / "numpy" / "m.csv").read_text()
    _assert_same_checkpoint(tmp_path / "cupy" / "c.npz", tmp_path / "numpy" / "c.npz")
    saved = _arrays(tmp_path / "cupy" / "c.npz")
    fresh = np.random.default_rng([0, 1]).bit_generator.state  # init_buffers(seed 0)
    assert json.loads(str(saved["buffers/rng"])) != fresh  # the masks were drawn from it
    plain = _arrays(tmp_path / "plain" / "c.npz")
    assert not np.array_equal(plain["params/W1"], saved["params/W1"])


def test_train_step_still_takes_a_cupy_generator():
    """The step's code is unchanged: sb.train_step(..., backend="cupy") takes a cupy
    Generator as its rng (the double's draws: NumPy's for the same seed), and gives the
    NumPy step's loss and parameters."""
    g = _dropout_cnn()
    X, y = np.random.default_rng(2).standard_normal((5, 1, 6, 6)), np.array([0, 1, 2, 0, 1])
    out = {}
    for backend in ("numpy", "cupy"):
        ns = {}
        with fake_cupy():
            import cupy

            exec(sb.train_step(g, optimizer="adam", backend=backend), ns)  # noqa: S102
            rng = cupy.random.default_rng(3) if backend == "cupy" else np.random.default_rng(3)
            params = ns["init_params"](0)
            state = ns["init_state"](params)
            loss = ns["train_step"](params, state, X, y, rng=rng)
            out[backend] = loss, {k: np.asarray(v).view(np.ndarray) for k, v in params.items()}
    assert out["cupy"][0] == out["numpy"][0]
    assert all(np.array_equal(out["cupy"][1][k], w) for k, w in out["numpy"][1].items())


# -- the script's text ------------------------------------------------------------------------
@functools.cache
def _scripts() -> dict:
    g = sb.models.mlp([8, 6, 3])
    cnn = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(8,), classes=3, batch_norm=True)
    return {"mlp.py": sb.training_script(g, optimizer="adam", backend="cupy"),
            "mixed.py": sb.training_script(g, optimizer="adam", precision="mixed",
                                           backend="cupy"),
            "cnn.py": sb.training_script(cnn, optimizer="sgd", dtype="float32",
                                         backend="cupy", checkpoint="sqrt"),
            "dropout.py": sb.training_script(_dropout_cnn(batch_norm=True), optimizer="adam",
                                             precision="mixed", backend="cupy")}


def test_script_passes_ruff_and_imports_only_cupy_and_numpy(tmp_path):
    """cupy (cupyx: its package) and numpy, and the standard library, only; the step's code (before the host's
    runtime) has no NumPy call, the host's code calls CuPy only to move arrays; init_params'
    draws are the ones HostGenerator makes on the host."""
    for name, src in _scripts().items():
        assert {"cupy", "numpy"} <= _imported(src) <= {"cupy", "cupyx", "numpy"}, name
        device, host = src[:src.index(HOST_START)], src[src.index(HOST_START):]
        assert not re.search(r"\bnp\.", device), name
        assert set(re.findall(r"\bcp\.\w+", host)) == {"cp.asarray", "cp.asnumpy"}, name
        step = device[:device.index("class HostGenerator")]
        draws = {"standard_normal", "uniform"} | ({"random"} if name == "dropout.py" else set())
        assert set(re.findall(r"\brng\.(\w+)\(", step)) <= draws, name
        assert "init_params(HostGenerator(rng))" in host and "order = cp.asarray(order)" in host
        # dropout: BUFFERS["rng"] is NumPy's generator (made on the host, by init_buffers
        # there), the step's rng a HostDraws of it
        assert ("HostDraws" in src) == (name == "dropout.py"), name
        if name == "dropout.py":
            assert 'return {"running": init_running(), "rng": np.random.default_rng([seed, 1])}' \
                in host
            assert "'rng': HostDraws(BUFFERS['rng'])}" in device
        (tmp_path / name).write_text(src)
    assert_ruff_clean(tmp_path, *_scripts())


def test_names_exist_in_cupy():
    """Every cp./cupyx. name of the scripts: in tests/cupy_api.txt (CuPy 14.2.0), and in
    the real cupy module when installed, where HostGenerator is a cupy.random.Generator
    that cupy.random.default_rng (init_params' first line) passes through (no GPU needed)."""
    listed = {ln for ln in API.read_text().splitlines() if not ln.startswith("#")}
    used = set().union(*(_used(src) for src in _scripts().values()))
    assert {"cupy.asnumpy", "cupy.asarray", "cupy.random.Generator"} <= used
    prefixes = {ln.rsplit(".", k)[0] for ln in listed for k in range(1, ln.count(".") + 1)}
    assert not sorted(n for n in used if n not in listed | prefixes)  # Generator: its methods
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed (pip install 'symbackprop[cupy]': cupy-cuda12x)")
    import cupy
    import cupyx

    missing = []
    for name in sorted(used):
        root, *parts = name.split(".")
        try:
            functools.reduce(getattr, parts, {"cupy": cupy, "cupyx": cupyx}[root])
        except AttributeError:
            missing.append(name)
    assert not missing
    src = _scripts()["mlp.py"]
    found = next(n for n in ast.parse(src).body
                 if isinstance(n, ast.ClassDef) and n.name == "HostGenerator")
    namespace = {"cp": cupy, "np": np}
    exec(ast.get_source_segment(src, found), namespace)  # noqa: S102 -- the script's own class
    host = namespace["HostGenerator"](np.random.default_rng(0))
    assert isinstance(host, cupy.random.Generator)
    assert cupy.random.default_rng(host) is host
    src = _scripts()["dropout.py"]
    found = next(n for n in ast.parse(src).body
                 if isinstance(n, ast.ClassDef) and n.name == "HostDraws")
    exec(ast.get_source_segment(src, found), namespace)  # noqa: S102 -- the script's own class
    draws = namespace["HostDraws"](np.random.default_rng(0))
    assert isinstance(draws, cupy.random.Generator) and cupy.random.default_rng(draws) is draws


# -- bad input -----------------------------------------------------------------------------
def test_without_a_device_one_line_before_any_work(tmp_path, digits, capsys):
    """CuPy imports without a GPU (or its driver) and fails at its first allocation with
    CUDA's traceback: the script asks first, before reading the data or writing anything,
    and says in one line why there is none and to use the NumPy script."""
    path = tmp_path / "train.py"
    path.write_text(_scripts()["mlp.py"])
    capsys.readouterr()
    with fake_cupy():
        sys.modules["cupy"].cuda.runtime.getDeviceCount = no_driver
        status = _load(path).main(["--data", str(digits), "--out", str(tmp_path / "ck.npz"),
                                   "--metrics", str(tmp_path / "m.csv")])
    out, err = capsys.readouterr()
    assert status == 2 and out == "" and err.count("\n") == 1, (status, out, err)
    assert err.endswith(f": error: CuPy sees no CUDA device ({NO_DRIVER}); this script runs its "
                        "steps on a GPU: on this machine, write and run the NumPy script "
                        "instead (symbackprop train-script with --backend numpy)\n"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.npz", "train.py"]


def test_real_cupy_without_a_device(tmp_path):
    """The audit's run, with the installed CuPy, on a machine without a GPU (make test's):
    one line and exit status 2, not CUDA's traceback from init_params."""
    problem = real_cupy()[1]
    if problem is None:
        pytest.skip("a CUDA device is here: benchmarks/gpu_check.py trains the script on it")
    (tmp_path / "c2.py").write_text(_scripts()["mlp.py"])  # an MLP 8-6-3
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "tiny.npz", X=rng.normal(size=(24, 8)), y=rng.integers(0, 3, 24))
    r = subprocess.run([sys.executable, "c2.py", "--data", "tiny.npz", "--epochs", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == [(
        f"c2.py: error: CuPy sees no CUDA device ({problem}); this script runs its steps on a "
        "GPU: on this machine, write and run the NumPy script instead (symbackprop "
        "train-script with --backend numpy)")]
    assert not (tmp_path / "checkpoint.npz").exists()


def test_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(CodegenError, match=r"distributed=mpi is the numpy script's \(mpirun\); "
                       r"the cupy script runs as one process: drop distributed=mpi, or use "
                       r"backend=numpy\."):
        sb.training_script(sb.models.mlp([4, 3, 2]), backend="cupy", distributed="mpi")
    out = tmp_path / "t.py"
    assert cli(["train-script", "mlp:4-3-2", "--backend", "cupy", "--precision", "mixed",
                "-o", str(out)]) == 0
    assert "import cupy as cp" in out.read_text() and "precision='mixed'" in out.read_text()
    (tmp_path / "net.py").write_text("import symbackprop as sb\ngraph = sb.models.cnn((1, 6, 6), "
                                     "channels=(2,), hidden=(8,), classes=3, dropout=0.25)\n")
    assert cli(["train-script", str(tmp_path / "net.py"), "--backend", "cupy", "-o",
                str(out)]) == 0  # dropout: no longer refused
    assert "'rng': HostDraws(BUFFERS['rng'])" in out.read_text()
    capsys.readouterr()
    assert cli(["train-script", "mlp:4-3-2", "--backend", "cupy", "--distributed", "mpi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop --distributed mpi, or use --backend numpy" in err
