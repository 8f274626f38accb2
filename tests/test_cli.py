"""Every kind of SPEC reaches every command: statements, .json, .py (graph or build()),
and mlp: shorthands."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symbackprop as sb
from symbackprop.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def specs(tmp_path):
    py_build = tmp_path / "net_build.py"
    py_build.write_text("import symbackprop as sb\n\n\ndef build():\n"
                        "    return sb.parse('y = tanh(w*x) + b', params=['w', 'b'])\n")
    py_graph = tmp_path / "net_graph.py"
    py_graph.write_text("import symbackprop as sb\n\ngraph = sb.models.mlp([5, 4, 3])\n")
    js = tmp_path / "net.json"
    sb.models.mlp([5, 4, 3], activation="tanh").save(js)
    return {"statements": "L = (w*x - y)**2", "build": str(py_build), "graph": str(py_graph),
            "json": str(js), "mlp": "mlp:5-4-3"}


@pytest.mark.parametrize("kind", ["statements", "build", "graph", "json", "mlp"])
def test_check_and_codegen_take_every_spec(kind, specs, capsys, tmp_path):
    assert main(["check", specs[kind]]) == 0  # random inputs, scalar parameters included
    out, err = capsys.readouterr()
    assert "all ok" in out and "Traceback" not in err
    out = tmp_path / "model.py"
    assert main(["codegen", specs[kind], "-o", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert "def value_and_grad(" in out.read_text()


def test_py_spec_without_graph_is_an_error(tmp_path, capsys):
    bad = tmp_path / "empty.py"
    bad.write_text("x = 1\n")
    assert main(["codegen", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err)
    assert len(err) == 1 and "defines neither 'graph' nor 'build()'" in err[0]


@pytest.mark.parametrize("fmt, needle", [("latex", r"\frac"), ("markdown", "| dL/dw |")])
def test_derive_formats(fmt, needle, capsys):
    assert main(["derive", "L = (w*x - y)**2", "--wrt", "w", "--at", "w=2,x=3,y=10",
                 "--format", fmt]) == 0
    out, err = capsys.readouterr()
    assert needle in out and "24" in out and "Traceback" not in err


# -- the installed command ------------------------------------------------------------------

def test_entry_point_is_installed_and_runs(tmp_path):
    """pip puts `symbackprop` next to the venv's python (pyproject's [project.scripts])."""
    exe = Path(sys.executable).parent / "symbackprop"
    assert exe.exists(), f"{exe} is missing: install the package with pip install -e ."
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, whatever pip installed
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("usage: symbackprop") and "A compiler for backpropagation" in \
        r.stdout
    r = subprocess.run([str(exe), "derive", "L = (w*x - y)**2", "--wrt", "w", "--at", "nope"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ParseError: --at 'nope'") and r.stderr.count("\n") == 1


def test_activating_the_venv_puts_the_command_on_the_path(tmp_path):
    """The README's way: `source .venv/bin/activate` in a new shell."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix == sys.base_prefix or not activate.exists():
        pytest.skip("not running in a virtual environment (make test makes one)")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    script = f'source "{activate}" && command -v symbackprop && symbackprop --help'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == str(Path(sys.prefix) / "bin" / "symbackprop")


def test_python_m_symbackprop_is_the_command():
    """``python -m symbackprop`` runs the CLI: its help, and a bad command's exit status 2."""
    run = subprocess.run([sys.executable, "-m", "symbackprop", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, check=False)
    assert run.returncode == 0 and run.stdout.startswith("usage: symbackprop"), run.stderr
    bad = subprocess.run([sys.executable, "-m", "symbackprop", "no-such-command"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert bad.returncode == 2 and "no-such-command" in bad.stderr


@pytest.mark.parametrize("argv", [["no-such-command"], ["codegen", "mlp:4-8-3", "--no-such-option"],
                                  ["train-script", "mlp:4-8-3", "--epochs"], []])
def test_usage_errors_are_one_line(argv, capsys):
    """A bad command, option or missing value: one line naming the fix, exit status 2."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "error:" in err and "--help" in err


# -- train-script and codegen: what each backend has, read from its record --------------------
def _one_line(capsys, argv, status=2) -> str:
    """Run the command; its status must be ``status`` and its stderr one line, returned."""
    assert main(argv) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra", [[], ["--distributed", "mpi"], ["--checkpoint", "sqrt"],
                                   ["--fuse-update"], ["--precision", "mixed"],
                                   ["--growth-interval", "5"],
                                   ["--dtype", "float32", "--precision", "mixed"]])
def test_a_backend_without_a_script_is_refused_before_its_options(extra, capsys):
    """array_api writes no training script: that is the one line, whatever else is given
    (not a word on processes, devices or XLA that its script would have)."""
    from symbackprop.codegen.backends import script_backends

    err = _one_line(capsys, ["train-script", "mlp:8-16-16-3", "--backend", "array_api", *extra])
    assert "--backend array_api writes no training script" in err, err
    assert "codegen --optimizer" in err and all(n in err for n in script_backends())
    assert not any(w in err for w in ("XLA", "process", "devices", "planned")), err
    with pytest.raises(sb.CodegenError, match="backend='array_api' writes no training script"):
        sb.training_script(sb.models.mlp([4, 3, 2]), backend="array_api", distributed="mpi")


def test_distributed_mpi_says_what_each_script_does_instead(capsys):
    """JAX's script runs as several processes itself (its own flags); torch's as one."""
    err = _one_line(capsys, ["train-script", "mlp:8-16-3", "--backend", "jax",
                             "--distributed", "mpi"])
    assert "runs as one process" not in err, err
    assert all(f in err for f in ("--coordinator", "--num-processes", "--process-id",
                                  "jax.distributed", "use --backend numpy")), err
    err = _one_line(capsys, ["train-script", "mlp:8-16-3", "--backend", "torch",
                             "--distributed", "mpi"])
    assert "the torch script runs as one process" in err and "--coordinator" not in err, err
    err = _one_line(capsys, ["train-script", "mlp:8-16-16-3", "--backend", "jax",
                             "--checkpoint", "sqrt"])
    assert "--checkpoint sqrt: the jax script has no gradient checkpointing" in err, err


def test_mixed_precision_refusal_names_every_backend_that_has_it():
    """The list in the message is the backends whose train_step takes precision='mixed'
    (tried one by one here), cupy's included; bfloat16's likewise."""
    from symbackprop.codegen.backends import NAMES

    g = sb.models.mlp([4, 3, 2])
    for precision in ("mixed", "bfloat16"):
        have = []
        for name in NAMES:
            try:
                sb.train_step(g, precision=precision, backend=name)
                have.append(name)
            except ValueError:
                pass
        assert "cupy" in have or precision == "bfloat16", have
        with pytest.raises(ValueError) as e:
            sb.train_step(g, precision=precision, backend="array_api")
        listed = str(e.value).split("(")[1] if precision == "bfloat16" else str(e.value)
        assert all(n in listed.split(";")[0] for n in have), (have, str(e.value))
        assert not any(n in listed.split(";")[0] for n in NAMES if n not in have
                       and n != "array_api"), (have, str(e.value))


def test_dropout_refusal_names_the_backends_with_dropout():
    """array_api has no random numbers: the message names every backend whose code for
    dropout is written (tried here), torch and cupy included."""
    from symbackprop.codegen.backends import NAMES

    g = sb.models.cnn((1, 6, 6), channels=(2,), hidden=(4,), classes=3, dropout=0.25)
    have = []
    for name in NAMES:
        try:
            sb.source(g, backend=name)
            have.append(name)
        except sb.CodegenError:
            pass
    assert {"torch", "cupy"} <= set(have) and "array_api" not in have, have
    with pytest.raises(sb.CodegenError) as e:
        sb.source(g, backend="array_api")
    use = str(e.value).split("Use ")[1]
    assert all(n in use for n in have), str(e.value)


def test_help_says_every_backend():
    """The commands write code for any backend (--backend), not NumPy alone."""
    import contextlib
    import io

    for argv in (["--help"], ["codegen", "--help"], ["train-script", "--help"]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main(argv)
        text = " ".join(out.getvalue().split())
        assert "NumPy forward/backward" not in text and "standalone NumPy" not in text, argv
        assert "--backend" in text, argv
        if argv[0] != "--help":  # precision: NumPy's float16 is slow, and why it is there
            assert "NumPy's float16 is emulated on CPUs and slow" in text, argv


# -- options that do not go together ---------------------------------------------------------
@pytest.mark.parametrize(("args", "words"), [
    (["--growth-interval", "5"], ["--growth-interval 5", "--precision mixed"]),
    (["--growth-interval", "2000"], ["--growth-interval 2000", "--precision mixed"]),
    (["--growth-interval", "5", "--precision", "float32"],
     ["--growth-interval 5", "--precision float32 has none"]),
    (["--dtype", "float32", "--precision", "float64"],
     ["--dtype float32 and --precision float64 disagree"]),
    (["--dtype", "float64", "--precision", "mixed"],
     ["--dtype float64 cannot go with --precision mixed", "drop --dtype"]),
    (["--dtype", "float32", "--precision", "mixed"], ["--dtype float32 cannot go with"]),
])
@pytest.mark.parametrize("command", [["train-script"], ["codegen", "--optimizer", "sgd"]])
def test_conflicting_options_are_one_line(command, args, words, capsys):
    err = _one_line(capsys, [*command, "mlp:8-16-3", *args])
    assert all(w in err for w in words), err


def test_agreeing_options_are_taken(tmp_path, capsys):
    out = tmp_path / "t.py"
    assert main(["train-script", "mlp:8-16-3", "--dtype", "float32", "--precision", "float32",
                 "-o", str(out)]) == 0
    assert "DTYPE = np.float32" in out.read_text()
    assert main(["train-script", "mlp:8-16-3", "--precision", "mixed", "--growth-interval", "5",
                 "-o", str(out)]) == 0
    assert "GROWTH_INTERVAL = 5" in out.read_text()


def test_growth_interval_without_mixed_is_a_value_error():
    g = sb.models.mlp([4, 3, 2])
    for make in (sb.train_step, sb.training_script, sb.compile):
        kwargs = {"optimizer": "sgd"} if make is sb.compile else {}
        with pytest.raises(ValueError, match="growth_interval=5 sets the loss scaler"):
            make(g, growth_interval=5, **kwargs)
        with pytest.raises(ValueError, match="precision='bfloat16' has none"):
            make(g, growth_interval=5, precision="bfloat16", backend="jax", **kwargs)
    assert "GROWTH_INTERVAL = 5" in sb.train_step(g, precision="mixed", growth_interval=5)


# -- codegen --optimizer: the training step's module ------------------------------------------
@pytest.mark.parametrize("args", [["--precision", "mixed"], ["--precision", "float32"],
                                  ["--lr", "0.1"], ["--growth-interval", "5"],
                                  ["--fuse-update"], ["--beta1", "0.5"]])
def test_codegen_step_options_need_optimizer(args, capsys):
    err = _one_line(capsys, ["codegen", "mlp:8-16-3", *args])
    assert f"{args[0]} needs --optimizer" in err, err
    if args[0] == "--precision":
        assert "training step's" in err, err


def _run_step(path, backend):
    """Import the module at ``path`` and run one train_step on a random batch: the loss
    and whether the parameters changed."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location(f"step_{backend}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 8)), rng.integers(0, 3, size=16)
    if backend == "torch":
        import torch

        params = mod.init_params(0)
        before = {k: v.clone() for k, v in params.items()}
        state = mod.init_state(params)
        loss = mod.train_step(params, state, X=torch.as_tensor(X, dtype=mod.DTYPE),
                              y=torch.as_tensor(y))
        return float(loss), any(not torch.equal(params[k], before[k]) for k in params)
    params = mod.init_params(0)
    before = {k: np.array(v, copy=True) for k, v in params.items()}
    state = mod.init_state(params)
    if backend == "jax":
        loss, params, state = mod.train_step(params, state, X=X, y=y)
    else:
        loss = mod.train_step(params, state, X=X, y=y)
    return float(loss), any(not np.array_equal(np.asarray(params[k]), before[k])
                            for k in params)


@pytest.mark.parametrize(("backend", "args", "kwargs"), [
    ("numpy", ["--optimizer", "adam", "--lr", "0.01"], {"optimizer": "adam", "lr": 0.01}),
    ("numpy", ["--optimizer", "momentum", "--momentum", "0.5", "--fuse-update"],
     {"optimizer": "momentum", "momentum": 0.5, "fuse_update": True}),
    ("numpy", ["--optimizer", "adam", "--precision", "mixed", "--growth-interval", "5"],
     {"optimizer": "adam", "precision": "mixed", "growth_interval": 5}),
    ("jax", ["--optimizer", "adam", "--precision", "float32"],
     {"optimizer": "adam", "precision": "float32"}),
    ("torch", ["--optimizer", "sgd", "--precision", "mixed"],
     {"optimizer": "sgd", "precision": "mixed"}),
])
def test_codegen_optimizer_writes_the_training_step(backend, args, kwargs, tmp_path, capsys):
    """codegen --optimizer writes sb.train_step's module with the same options, and one
    train_step of it runs and changes the parameters."""
    if backend != "numpy":
        pytest.importorskip(backend)
    out = tmp_path / f"step_{backend}.py"
    assert main(["codegen", "mlp:8-16-3", "--backend", backend, *args, "-o", str(out)]) == 0
    capsys.readouterr()
    assert out.read_text() == sb.train_step(sb.models.mlp([8, 16, 3]), backend=backend,
                                            **kwargs)
    assert "def train_step(" in out.read_text() and "def update(" in out.read_text()
    if backend == "torch" and "mixed" in args:
        return  # float16 on the CPU: torch's mixed step is for a GPU (tests/test_torch_mixed.py)
    loss, changed = _run_step(out, backend)
    assert np.isfinite(loss) and changed


def test_codegen_optimizer_refuses_explain(capsys):
    err = _one_line(capsys, ["codegen", "mlp:8-16-3", "--optimizer", "sgd", "--explain"])
    assert "--explain" in err and "--optimizer" in err


def test_numpy_mixed_script_says_float16_is_slow_on_cpus():
    """The NumPy mixed-precision script's docstring says why it is slow; the GPU's (cupy)
    does not."""
    g = sb.models.mlp([4, 3, 2])
    doc = " ".join(sb.training_script(g, precision="mixed").split('"""')[1].split())
    assert "NumPy's float16 is emulated on CPUs" in doc and "correctness and the lesson" in doc
    gpu = " ".join(sb.training_script(g, precision="mixed", backend="cupy").split('"""')[1].split())
    assert "emulated" not in gpu
    assert "emulated" not in sb.training_script(g).split('"""')[1]


def test_docs_train_script_synopsis_has_every_option():
    """docs/training.md's synopsis of train-script lists every option of its --help."""
    from symbackprop.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {s for a in sub.choices["train-script"]._actions for s in a.option_strings
               if s.startswith("--") and s not in ("--help", "--output")}  # -o: [-o train.py]
    text = (ROOT / "docs" / "training.md").read_text()
    synopsis = text[text.index("symbackprop train-script SPEC [-o train.py]"):]
    synopsis = synopsis[:synopsis.index("```")]
    missing = sorted(o for o in options if f"[{o}" not in synopsis)
    assert not missing, missing


def test_numpy_commands_import_neither_jax_nor_torch(tmp_path):
    """The NumPy commands load no other backend's record (loading one imports its library
    where installed: seconds on every command, which once happened through the lists of
    backends in the options' help and in the messages; a command's --help, which prints
    such a list, reads the records when it prints it)."""
    code = f"""
import contextlib, io, sys
from symbackprop.cli import main
out = {str(tmp_path)!r}
for argv in (["--help"], ["codegen", "mlp:4-3-2"],
             ["codegen", "mlp:4-3-2", "--optimizer", "adam", "--precision", "mixed"],
             ["train-script", "mlp:4-3-2", "-o", out + "/a.py"],
             ["train-script", "mlp:4-3-2", "--precision", "mixed", "-o", out + "/b.py"],
             ["train-script", "mlp:4-3-2", "--distributed", "mpi", "-o", out + "/c.py"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        assert main(argv) in (0, None), argv
    loaded = [m for m in ("jax", "torch") if m in sys.modules]
    assert not loaded, (argv, loaded)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
