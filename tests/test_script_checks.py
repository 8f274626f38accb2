"""Bad input to the torch and JAX training scripts is one line and exit status 2, as in the
NumPy script (tests/test_train_script.py): the three scripts share its checked data
loading (``load_data``, ``check_split``), ``fail`` and ``option`` (runtime/script.py), and
refuse a mid-epoch checkpoint resumed with another --batch-size.

The generated scripts run in this process (loaded from their file, ``main(argv)`` called
as ``python train.py ARGV`` would); reading the data needs no device.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from standalone import run_with_numpy_only

import symbackprop as sb
from symbackprop.codegen import runtime
from symbackprop.codegen.runtime import script as runtime_script
from symbackprop.errors import CodegenError

HAS = {b: importlib.util.find_spec(b) is not None for b in ("torch", "jax")}
needs = {b: pytest.mark.skipif(not HAS[b], reason=f"{b} is not installed (pip install "
                               f"'symbackprop[{b}]')") for b in HAS}
RUNTIME = Path(runtime.__file__).parent


def _script(tmp_path, backend, g=None, name=None, **kwargs):
    """The training script of g (an MLP 4-3-3 by default) for backend, loaded as a module."""
    name = name or f"train_{backend}.py"
    path = tmp_path / name
    # float32: a float64 JAX script turns on jax_enable_x64 for the whole process
    kwargs.setdefault("dtype", "float32" if backend == "jax" else "float64")
    path.write_text(sb.training_script(g or sb.models.mlp([4, 3, 3]), backend=backend,
                                       optimizer="sgd", lr=0.1, **kwargs))
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module, capsys, *argv):
    """module.main(argv): (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = module.main([*map(str, argv)])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _with_data(tmp_path, monkeypatch, backend):
    """In tmp_path: backend's script of the MLP 4-3-3 as a module, d.npz (16 rows), and the
    script's checkpoint name and device options: (module, out, device)."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    np.savez("d.npz", X=rng.normal(size=(16, 4)), y=rng.integers(0, 3, 16))
    return (_script(tmp_path, backend), "ck.pt" if backend == "torch" else "ck.npz",
            ["--device", "cpu"] if backend == "torch" else [])


def _one_line(module, capsys, says, *argv):
    code, out, err = _run(module, capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and says in err, (code, err)
    assert "Traceback" not in err and "epoch" not in out


def _bad_data(folder: Path) -> dict:
    """Data files each wrong in one way, and what the error line says."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 4))
    cases = {
        "empty": ({"X": np.zeros((0, 4)), "y": np.zeros(0, int)}, "X has no rows"),
        "strings": ({"X": np.full((8, 4), "a"), "y": np.zeros(8, int)},
                    "X holds <U1 values; expected numbers"),
        "label7": ({"X": X, "y": np.full(8, 7)},
                   "y[0] = 7 is outside the class range; expected integer labels 0..2"),
        "halves": ({"X": X, "y": np.full(8, 0.5)}, "y[0] = 0.5 is not an integer"),
        "y2d": ({"X": X, "y": np.zeros((8, 2), int)}, "y has shape (8, 2); expected (8,)"),
        "test_rows": ({"X": X, "y": np.zeros(8, int), "X_test": X[:5], "y_test": np.zeros(4, int)},
                      "X_test has 5 rows but y_test has 4"),
    }
    for name, (arrays, _) in cases.items():
        np.savez(folder / f"{name}.npz", **arrays)
    return {name: says for name, (_, says) in cases.items()}


@needs["torch"]
def test_torch_script_bad_data_is_one_line(tmp_path, monkeypatch, capsys):
    """.npz, .csv and .pt data each wrong in one way: one line, exit 2, no traceback; X with
    no rows says so (not that a checkpoint has seen 0 samples); a .pt holding a bare
    tensor, or bad labels, is refused as an .npz is."""
    import torch

    monkeypatch.chdir(tmp_path)
    module = _script(tmp_path, "torch")
    for name, says in _bad_data(tmp_path).items():
        _one_line(module, capsys, says, "--data", f"{name}.npz", "--device", "cpu")
    torch.save(torch.zeros(3, 4), "bare.pt")
    _one_line(module, capsys, "bare.pt holds a Tensor; expected a dict of tensors",
              "--data", "bare.pt", "--device", "cpu")
    torch.save({"X": torch.randn(8, 4), "y": torch.full((8,), 7)}, "label7.pt")
    _one_line(module, capsys, "y[0] = 7 is outside the class range", "--data", "label7.pt",
              "--device", "cpu")
    torch.save({"X": torch.randn(8, 4)}, "no_y.pt")
    _one_line(module, capsys, "no_y.pt has no tensor 'y' (found X)", "--data", "no_y.pt",
              "--device", "cpu")
    Path("bad.csv").write_text("1,2,3,4,0\n1,2,x,4,1\n")
    _one_line(module, capsys, "bad.csv, line 2, column 3: 'x' is not a number",
              "--data", "bad.csv", "--device", "cpu")
    _one_line(module, capsys, "--device nope: ", "--data", "label7.pt", "--device", "nope")
    torch.save({"X": torch.randn(8, 4), "y": torch.randint(0, 3, (8,))}, "ok.pt")
    assert _run(module, capsys, "--data", "ok.pt", "--device", "cpu", "--epochs", 1,
                "--out", "ok_ck.pt")[0] == 0


@needs["jax"]
def test_jax_script_bad_data_and_options_are_one_line(tmp_path, monkeypatch, capsys):
    """The JAX script: the same bad data, one line and exit 2; options checked as the NumPy
    script's (--lr nan, --epochs 0), and --help states the exit statuses."""
    monkeypatch.chdir(tmp_path)
    module = _script(tmp_path, "jax")
    for name, says in _bad_data(tmp_path).items():
        _one_line(module, capsys, says, "--data", f"{name}.npz")
    for option, says in (("--lr", "nan is not a finite number > 0.0"),
                         ("--epochs", "0 is not a finite number >= 1")):
        code, _, err = _run(module, capsys, "--data", "label7.npz", option,
                            "nan" if option == "--lr" else "0")
        assert code == 2 and says in err and "Traceback" not in err, err
    code, out, _ = _run(module, capsys, "--help")
    assert code == 0 and "Exit status: 0 done, 1 stopped on nan/inf, 2 bad input" in \
        " ".join(out.split())


def _mid_epoch(backend, path):
    """A checkpoint of the MLP's script turned into one written 4 samples into epoch 2 (as a
    last_good checkpoint of --batch-size 4 is)."""
    if backend == "torch":
        import torch

        saved = torch.load(path, weights_only=True)
        saved["seen"] = 4
        torch.save(saved, path)
        return
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["progress/seen"] = np.array(4)
    np.savez(path, **arrays)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs["torch"]),
                                     pytest.param("jax", marks=needs["jax"])])
def test_resuming_mid_epoch_with_another_batch_size_is_refused(tmp_path, monkeypatch, capsys,
                                                               backend):
    """A checkpoint 4 samples into an epoch resumes with --batch-size 4 and is refused, in
    one line and exit 2, with --batch-size 3 (its batches would not be the run's)."""
    module, out, device = _with_data(tmp_path, monkeypatch, backend)
    assert _run(module, capsys, "--data", "d.npz", "--epochs", 1, "--batch-size", 4,
                "--out", out, *device)[0] == 0
    _mid_epoch(backend, out)
    _one_line(module, capsys, "the checkpoint has seen 4 samples of epoch 2, which is not a "
              "whole number of batches of --batch-size 3", "--data", "d.npz", "--epochs", 2,
              "--batch-size", 3, "--resume", out, "--out", "again" + out[2:], *device)
    code, stdout, err = _run(module, capsys, "--data", "d.npz", "--epochs", 2, "--batch-size",
                             4, "--resume", out, "--out", "again" + out[2:], *device)
    assert code == 0 and "epoch 2/2" in stdout, err


@pytest.mark.parametrize("backend", [pytest.param("torch", marks=needs["torch"]),
                                     pytest.param("jax", marks=needs["jax"])])
def test_one_fail_and_the_numpy_data_checks_in_every_script(backend):
    """The torch and JAX scripts carry the NumPy script's fail, load_data and check_split
    (one process: without MPI), and no CSV reader of their own."""
    src = sb.training_script(sb.models.mlp([4, 3, 3]), backend=backend)
    numpy = sb.training_script(sb.models.mlp([4, 3, 3]))
    fail = runtime.source_of(runtime_script, "fail", variants={"mpi": False})
    assert fail in src and src.count("def fail(") == 1
    for name in ("load_data", "read_csv", "read_npz"):
        own = runtime.source_of(runtime_script, name)
        assert own in src and own in numpy and src.count(f"def {name}(") == 1, name
    assert "def rows_of(" not in src


@pytest.mark.parametrize("backend, out", [
    ("numpy", "checkpoint.npz"), pytest.param("torch", "checkpoint.pt", marks=needs["torch"]),
    pytest.param("jax", None, marks=needs["jax"])])
def test_one_add_run_options_in_every_script(tmp_path, backend, out):
    """--data, --epochs, --batch-size, --lr, --seed, --checkpoint-every, --resume and --out
    come from the one add_run_options of runtime/script.py: the defaults are those the
    script was generated with, --out's the backend's (the JAX script's None: no checkpoint
    unless asked for)."""
    module = _script(tmp_path, backend, epochs=3, batch_size=8, seed=5)
    src = Path(module.__file__).read_text()
    own = runtime.source_of(runtime_script, "add_run_options")
    assert own in src and src.count("def add_run_options(") == 1
    a = module.parse_args(["--data", "d.npz"])
    assert (a.data, a.epochs, a.batch_size, a.lr, a.seed, a.checkpoint_every, a.resume,
            a.out) == ("d.npz", 3, 8, 0.1, 5, 0, None, out)


@pytest.mark.parametrize("backend", [pytest.param("torch", marks=needs["torch"]),
                                     pytest.param("jax", marks=needs["jax"])])
def test_checkpoint_entries_lacking_or_bad(tmp_path, monkeypatch, capsys, backend):
    """A checkpoint without an entry says which it lacks; one with an entry of the wrong
    kind says it has a bad entry (not that it lacks one)."""
    module, out, device = _with_data(tmp_path, monkeypatch, backend)
    device += ["--batch-size", "4"]  # the JAX script trains full batches only
    assert _run(module, capsys, "--data", "d.npz", "--epochs", 1, "--out", out, *device)[0] == 0
    if backend == "torch":
        import torch

        saved = torch.load(out, weights_only=True)
        torch.save({k: v for k, v in saved.items() if k != "epoch"}, "lacks.pt")
        torch.save({**saved, "shuffle": torch.zeros(3)}, "bad.pt")  # not a generator state
    else:
        with np.load(out) as f:
            arrays = {k: f[k] for k in f.files}
        np.savez("lacks.npz", **{k: v for k, v in arrays.items() if k != "progress/epoch"})
        np.savez("bad.npz", **{**arrays, "progress/rng": np.array("{not json")})
    key = "'epoch'" if backend == "torch" else "'progress/epoch'"
    ext = out[2:]
    _one_line(module, capsys, f"checkpoint lacks{ext} lacks {key}", "--data", "d.npz",
              "--epochs", 2, "--resume", "lacks" + ext, *device)
    _one_line(module, capsys, f"checkpoint bad{ext} has a bad entry: ", "--data", "d.npz",
              "--epochs", 2, "--resume", "bad" + ext, *device)


@pytest.mark.parametrize(("backend", "says"), [
    ("jax", "JAX (No module named 'jax'); install it with: pip install jax"),
    ("torch", ("PyTorch (No module named 'torch'); install it with: pip install torch (on a "
               "machine without a GPU, the CPU build first: pip install torch --index-url "
               "https://download.pytorch.org/whl/cpu)")),
    ("cupy", "CuPy (No module named 'cupy'); install it with: pip install cupy-cuda12x")])
def test_script_without_its_library_is_one_line_naming_it(tmp_path, backend, says):
    """Run where its library is missing (a child Python that finds NumPy alone), a script
    stops before any work with one line naming what to install and exit status 2, as the
    MPI script does without mpi4py (tests/test_mpi.py), not with a traceback; the
    backend's install hint is require()'s (sb.compile's error)."""
    script = tmp_path / "train.py"
    script.write_text(sb.training_script(sb.models.mlp([4, 3, 3]), backend=backend))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(16, 4)), y=rng.integers(0, 3, 16))
    r = run_with_numpy_only(tmp_path, script, "--data", "d.npz", "--out", "ck.npz")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == [f"train.py: error: this script needs {says}"]
    assert r.stdout == "" and not (tmp_path / "ck.npz").exists()


def test_a_backend_without_a_script_names_those_with_one():
    """--backend array_api writes no script: the message lists the backends that do, from
    the registry."""
    with pytest.raises(CodegenError) as e:
        sb.training_script(sb.models.mlp([4, 3, 3]), backend="array_api")
    assert "use backend='numpy', 'jax', 'torch' or 'cupy'." in str(e.value), e.value


@pytest.mark.parametrize("module", [pytest.param("torch_script", marks=needs["torch"]),
                                    pytest.param("jax_script", marks=needs["jax"])])
def test_runtime_script_modules_run_alone(module):
    """runtime/torch_script.py and runtime/jax_script.py run alone (``python FILE --help``),
    as runtime/__init__.py promises; torch's imports nothing of the JAX script's."""
    path = RUNTIME / f"{module}.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    r = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                       timeout=120, check=False, env=env, cwd=path.parents[3])
    assert r.returncode == 0 and "Exit status" in r.stdout, r.stderr[-2000:]
    imported = {n.module for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ImportFrom)}
    assert "jax_script" not in imported, imported
