"""Generated NumPy source: parses, imports only NumPy and the standard library, passes
ruff, is deterministic, runs in a fresh interpreter where symbackprop cannot be imported,
keeps float32 as float32, and never lets a node name reach the code unescaped."""

from __future__ import annotations

import ast
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tokenize

import numpy as np
import pytest
import sympy as sp
from standalone import run_without_symbackprop
from test_ops_grad import ALL_CASES, compiled  # tests/ is on sys.path

import symbackprop as sb
from symbackprop.ops.elementwise import X, ew

NAUGHTY = [
    "h 1", "class", "x; import os", 'quo"te', "it's", "new\nline", "back\\slash",
    "__import__('os').system('echo HACKED')", "np", "DTYPE", "def", "1st", 'tri"""ple',
    "ünï", "dL", "sum", "#comment",
]


# -- the graphs ---------------------------------------------------------------------------
def tanh_net() -> sb.Graph:
    """A deep tanh chain with a mean-squared loss (mean over a symbolic batch)."""
    g = sb.Graph(name="tanh_net")
    h = g.input("X", shape=("N", 6))
    for k in range(1, 6):
        h = sb.tanh(h @ g.param(f"W{k}", shape=(6, 6)) + g.param(f"b{k}", shape=(6,)))
    g.output("pred", h @ g.param("Wout", shape=(6, 2)))
    g.output("L", sb.mse(g["pred"], g.input("Y", shape=("N", 2))))
    return g


def naughty_graph() -> sb.Graph:
    """Every node name a hostile or non-identifier string."""
    g = sb.Graph(name="naughty 'graph'\n\"\"\"")
    x = g.input(NAUGHTY[0], shape=("N", 3))
    h = x
    for i, name in enumerate(NAUGHTY[1:-1]):
        p = g.param(name, shape=(3,))
        h = g.name(sb.tanh(h * p) if i % 2 else h + p, name + " node")
    g.output(NAUGHTY[-1], sb.mean(h * h))
    return g


def scalar_graphs():
    yield "chain", sb.parse("a = 2*x; b = a + 3; c = b**2"), {"x": 1.0}
    yield "lsq", sb.parse("L = (w*x - y)**2", params=["w"]), {"w": 2.0, "x": 3.0, "y": 10.0}
    yield "sigmoid", sb.parse("z = w*x + b; s = sigmoid(z); L = (s - y)**2",
                              params=["w", "b"]), None


def graphs():
    for key, g, _ in scalar_graphs():
        yield key, g
    yield "mlp", sb.models.mlp([784, 256, 256, 256, 10])
    yield "tanh", tanh_net()
    yield "naughty", naughty_graph()


GRAPHS = dict(graphs())
SIZES = {"N": 5}


def op_sources():
    """(id, source, built case, compiled) for every op's small graph of the gradient
    harness (shared with it: each is generated once)."""
    for p in ALL_CASES:
        name, case = p.values
        b, fn = compiled(name, case)
        yield p.id, fn.source, b, fn


@pytest.fixture(scope="module")
def op_cases():
    return list(op_sources())


# -- static checks ------------------------------------------------------------------------
ALLOWED_METHODS = {"sum", "mean", "max", "min", "reshape", "argmax", "astype", "copy", "T",
                   "get",  # get: the dict of cached ones vectors (_ones)
                   "view", "append",  # the workspace's packer (runtime/workspace.py)
                   "transpose", "swapaxes", "ravel",  # convolution helpers (issue 13)
                   "random"}  # dropout's mask: the generator's draws (issue 13)


def check_ast(src: str) -> ast.Module:
    """Parse ``src`` and check it imports only NumPy and the standard library, and calls
    only NumPy, array methods, DTYPE, len and its own helper functions."""
    tree = ast.parse(src)
    helpers = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in generated code"
            mods = [node.module]
        else:
            mods = []
        for m in mods:
            top = m.split(".")[0]
            assert top == "numpy" or top in sys.stdlib_module_names, f"imports {m}"
            assert top not in ("os", "subprocess", "sys", "importlib", "builtins"), m
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Call):  # np.vectorize(math.erf, ...)(x): the call is checked
                continue
            if isinstance(f, ast.Name):
                # the builtins the workspace's packer (runtime/workspace.py) calls
                runtime = {"int", "max", "range", "sorted", "zip"}
                runtime |= {"tuple", "slice", "any", "min"}  # convolution helpers' windows (issue 13)
                runtime |= {"ValueError"}  # batch norm without running statistics (issue 13)
                assert f.id in helpers | {"DTYPE", "len"} | runtime, f"calls {f.id}()"
            else:
                assert isinstance(f, ast.Attribute), ast.dump(f)
                root = f.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                is_np = isinstance(root, ast.Name) and root.id == "np"
                assert is_np or f.attr in ALLOWED_METHODS, f"calls .{f.attr}()"
        if isinstance(node, ast.Name):
            assert node.id not in ("eval", "exec", "__import__", "os", "open", "compile",
                                   "getattr", "globals"), node.id
        # (a lambda only as the packer's sort key: runtime/workspace.py)
        assert not isinstance(node, (ast.Global, ast.Nonlocal, ast.With, ast.Try, ast.Delete))
        assert not isinstance(node, ast.Lambda) or "def _pack(" in src
    return tree


@pytest.mark.parametrize("key", list(GRAPHS))
def test_source_parses_and_imports_only_numpy(key):
    src = sb.numpy_source(GRAPHS[key])
    tree = check_ast(src)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [a.name for n in imports for a in n.names] == ["numpy"]
    names = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert {"forward", "value_and_grad"} <= names


def test_every_op_source_parses_and_imports_only_numpy(op_cases):
    for case_id, src, _, _ in op_cases:
        try:
            check_ast(src)
        except AssertionError as e:
            raise AssertionError(f"{case_id}: {e}") from None


@pytest.mark.parametrize("key", list(GRAPHS))
def test_source_is_deterministic(key, tmp_path):
    g = GRAPHS[key]
    a, b = sb.numpy_source(g), sb.numpy_source(g)
    assert a == b
    p = tmp_path / "g.json"
    g.save(p)
    assert sb.numpy_source(sb.load(p)) == a
    assert sb.numpy_source(sb.from_networkx(sb.to_networkx(g))) == a
    # and the same graph built again from scratch
    fresh = dict(graphs())[key]
    assert sb.numpy_source(fresh) == a


def test_ruff_passes_on_generated_code(tmp_path, op_cases):
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    files = []
    for key, g in GRAPHS.items():
        for dtype in ("float64", "float32"):
            files.append((f"{key}_{dtype}.py", sb.numpy_source(g, dtype=dtype)))
    for k, (case_id, src, _, _) in enumerate(op_cases):
        files.append((f"op_{k}.py", src))
    for name, src in files:
        (tmp_path / name).write_text(src)
    res = subprocess.run([ruff, "check", "--isolated", "--no-cache", "--output-format=concise",
                          "."], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


# -- running in a fresh interpreter ------------------------------------------------------------
# tests/standalone.py runs the code below with python -I -S (the editable install's .pth
# finder is skipped), NumPy's folder and the test's folder only on the path; it asserts that
# symbackprop cannot be found and that nothing of ours, SymPy or networkx gets imported.
RUNNER = """
    import importlib, json
    import numpy as np
    jobs = json.load(open("jobs.json"))
    for job in jobs:
        mod = importlib.import_module(job["module"])
        arrays = dict(np.load(job["inputs"]))
        fwd = mod.forward(**{k: arrays[k] for k in job["forward_args"]})
        loss, grads = mod.value_and_grad(**{k: arrays[k] for k in job["grad_args"]})
        out = {"loss": np.asarray(loss)}
        out.update({"grad:" + k: np.asarray(v) for k, v in grads.items()})
        out.update({"fwd:" + k: np.asarray(v) for k, v in fwd.items()})
        np.savez(job["outputs"], **{str(i): v for i, v in enumerate(out.values())})
        json.dump(list(out), open(job["outputs"] + ".keys.json", "w"))
    print("ran", len(jobs))
"""


def _params(mod_src: str, fname: str) -> list[str]:
    tree = ast.parse(mod_src)
    fn = next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == fname)
    args = fn.args.args  # those without a default (training=, running=, rng= have one)
    return [a.arg for a in args[:len(args) - len(fn.args.defaults)]]


def test_generated_code_runs_standalone(tmp_path, op_cases):
    """Every graph's source runs in a fresh interpreter without symbackprop and gives
    the same loss, gradients and forward outputs as ``sb.compile`` in this process."""
    jobs, expected = [], []
    todo = [(key, sb.compile(g), sb.testing.random_inputs(g, SIZES, seed=3))
            for key, g in GRAPHS.items()]
    todo += [(case_id, fn, b.arrays) for case_id, _, b, fn in op_cases]
    for k, (key, fn, arrays) in enumerate(todo):
        src = fn.source
        mod = f"gen_{k}"
        (tmp_path / f"{mod}.py").write_text(src)
        # arrays keyed by the generated parameter names
        by_param = {fn.arg_names[n]: v for n, v in arrays.items()}
        np.savez(tmp_path / f"in_{k}.npz", **by_param)
        jobs.append({"module": mod, "inputs": str(tmp_path / f"in_{k}.npz"),
                     "outputs": str(tmp_path / f"out_{k}.npz"),
                     "forward_args": _params(src, "forward"),
                     "grad_args": _params(src, "value_and_grad")})
        loss, grads = fn.value_and_grad(**arrays)
        expected.append((key, loss, grads, fn.forward(**arrays)))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    res = run_without_symbackprop(tmp_path, RUNNER, timeout=300)
    assert res.stdout.strip() == f"ran {len(jobs)}"
    for job, (key, loss, grads, fwd) in zip(jobs, expected):
        with open(job["outputs"] + ".keys.json") as f:
            keys = json.load(f)
        data = np.load(job["outputs"])
        got = {k: data[str(i)] for i, k in enumerate(keys)}
        np.testing.assert_array_equal(got["loss"], loss, err_msg=key)
        assert sorted(k[5:] for k in got if k.startswith("grad:")) == sorted(grads), key
        for w, v in grads.items():
            np.testing.assert_array_equal(got["grad:" + w], v, err_msg=f"{key}: d{w}")
        for o, v in fwd.items():
            np.testing.assert_array_equal(got["fwd:" + o], v, err_msg=f"{key}: {o}")


# -- scalar facts and dtypes ---------------------------------------------------------------------
def test_scalar_examples_values():
    fn = sb.compile(GRAPHS["chain"], wrt=["x"])
    c, grads = fn.value_and_grad(x=1.0)
    assert float(c) == 25.0 and float(grads["x"]) == 20.0
    assert float(fn.forward(x=1.01)["c"]) == pytest.approx(25.2004)
    fn = sb.compile(GRAPHS["lsq"], wrt=["w"])
    L, grads = fn.value_and_grad(w=2.0, x=3.0, y=10.0)
    assert float(L) == 16.0 and float(grads["w"]) == -24.0


def test_float32_mlp_gives_float32():
    g = GRAPHS["mlp"]
    arrays = sb.testing.random_inputs(g, {"N": 16}, seed=5)
    f32 = sb.compile(g, dtype="float32")
    f64 = sb.compile(g)
    assert "DTYPE = np.float32" in f32.source
    loss, grads = f32.value_and_grad(**arrays)
    assert np.asarray(loss).dtype == np.float32
    assert np.asarray(f32.forward(**arrays)["logits"]).dtype == np.float32
    loss64, grads64 = f64.value_and_grad(**arrays)
    assert float(loss) == pytest.approx(float(loss64), rel=1e-5)
    for k, v in grads.items():
        assert v.dtype == np.float32, f"d{k} is {v.dtype}"
        scale = float(np.abs(grads64[k]).max())
        np.testing.assert_allclose(v, grads64[k], rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("key", ["tanh", "naughty", "sigmoid"])
def test_float32_other_graphs(key):
    g = GRAPHS[key]
    arrays = sb.testing.random_inputs(g, SIZES, seed=2)
    loss, grads = sb.compile(g, dtype="float32").value_and_grad(**arrays)
    assert np.asarray(loss).dtype == np.float32
    assert all(np.asarray(v).dtype == np.float32 for v in grads.values()), \
        {k: np.asarray(v).dtype for k, v in grads.items()}


def test_unknown_dtype_is_refused():
    with pytest.raises(sb.CodegenError, match="float16"):
        sb.numpy_source(GRAPHS["lsq"], dtype="float16")


# -- hostile node names ---------------------------------------------------------------------------
def test_naughty_names_are_escaped():
    g = GRAPHS["naughty"]
    src = sb.numpy_source(g)
    tree = check_ast(src)
    # every name the code binds is a plain identifier; none is a hostile string
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    bound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.args}
    assert all(b.isidentifier() for b in bound)
    assert "os" not in bound and "__import__" not in bound and "system" not in bound
    # the hostile strings appear only inside string literals (docstrings, dict keys) and
    # comments, never as code: look at the code tokens alone
    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    code = [t.string for t in toks if t.type in (tokenize.NAME, tokenize.OP)]
    # forward, value_and_grad and the planned loss_and_grads_into, then the helpers
    assert code.count("import") == 1 and code.count("def") == 3 + src.count("\ndef _")
    assert ";" not in code
    for bad in ("os", "system", "__import__", "eval", "exec", "open", "HACKED"):
        assert bad not in code, bad
    for t in toks:
        if t.type == tokenize.COMMENT:
            assert "\n" not in t.string
    # np and DTYPE are not shadowed: still the module and the dtype
    mod = sb.codegen.loader.load_source(src, "naughty_check")
    assert mod.np is np and mod.DTYPE is np.float64


def test_naughty_names_run_and_check():
    g = GRAPHS["naughty"]
    fn = sb.compile(g)
    arrays = sb.testing.random_inputs(g, SIZES, seed=1)
    _, grads = fn.value_and_grad(**arrays)  # arrays keyed by the original node names
    assert sorted(grads) == sorted(g.nodes("param"))
    assert set(fn.forward(**arrays)) == {NAUGHTY[-1]}
    report = sb.check_grad(g, sizes=SIZES)
    assert report.ok, str(report)


def _cli():
    exe = os.path.join(os.path.dirname(sys.executable), "symbackprop")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "symbackprop.cli"]


def test_cli_codegen_on_naughty_json(tmp_path):
    g = GRAPHS["naughty"]
    p = tmp_path / "naughty.json"
    g.save(p)
    out = tmp_path / "gen.py"
    res = subprocess.run(_cli() + ["codegen", str(p), "-o", str(out)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    src = out.read_text()
    check_ast(src)
    assert src == sb.numpy_source(sb.load(p))
    mod = sb.codegen.loader.load_source(src, "naughty_cli")
    fn = sb.compile(g)
    arrays = {fn.arg_names[k]: v for k, v in sb.testing.random_inputs(g, SIZES).items()}
    loss, _ = mod.value_and_grad(**arrays)
    assert np.isfinite(loss)


def test_colliding_escaped_names_keep_their_values():
    """"h 1" and "h_1" escape to different identifiers, and arrays passed by node name
    reach the right parameter."""
    g = sb.Graph()
    a = g.input("h 1", shape=(2,))
    b = g.param("h_1", shape=(2,))
    g.output("L", sb.sum(a * a + 10 * b))
    fn = sb.compile(g)
    assert fn.arg_names["h 1"] != fn.arg_names["h_1"]
    out = fn.forward(**{"h 1": np.array([1.0, 2.0]), "h_1": np.array([3.0, 4.0])})
    assert float(out["L"]) == 1 + 4 + 30 + 40
    _, grads = fn.value_and_grad(**{"h 1": np.array([1.0, 2.0]), "h_1": np.zeros(2)})
    np.testing.assert_array_equal(grads["h_1"], [10.0, 10.0])


def gelu_net() -> sb.Graph:
    """GELU, x (1 + erf(x / sqrt 2)) / 2: erf has no NumPy ufunc, and sqrt(2) a float64 form."""
    g = sb.Graph(name="gelu")
    z = g.input("X", shape=("N", 4)) @ g.param("W", shape=(4, 5)) + g.param("b", shape=(5,))
    h = g.output("h", ew([z], X[0] * (1 + sp.erf(X[0] / sp.sqrt(2))) / 2))
    y = g.input("y", shape=("N",), dtype="int")
    g.output("L", sb.softmax_cross_entropy(h @ g.param("V", shape=(5, 3)), y))
    return g


def test_functions_numpy_has_no_ufunc_for_run_on_arrays(tmp_path):
    """erf (like erfc, gamma, lgamma) is math's, mapped over the array by a helper of the
    module (1 + erf(u) is computed as erfc(-u), which does not cancel): the value matches math.erf, the gradient finite differences, the module imports
    only NumPy and math (inside the helper) and passes ruff; no float64 constant (sqrt 2)
    widens a float32 step."""
    g = gelu_net()
    src = sb.numpy_source(g)
    check_ast(src)
    assert "def _erfc(x):" in src and "math.erfc(" not in src.replace("np.vectorize(math.erfc", "")
    assert "np.sqrt(2)" not in src
    (tmp_path / "gelu.py").write_text(src)
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is not None:
        res = subprocess.run([ruff, "check", "--isolated", "--no-cache", "gelu.py"],
                             cwd=tmp_path, capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stdout
    arrays = sb.testing.random_inputs(g, {"N": 6})
    h = sb.compile(g).forward(**arrays)["h"]
    z = arrays["X"] @ arrays["W"] + arrays["b"]
    np.testing.assert_allclose(h, z * (1 + np.vectorize(math.erf)(z / math.sqrt(2))) / 2,
                               rtol=1e-13)
    report = sb.check_grad(g)
    assert report.ok, report.errors
    f32 = sb.compile(g, dtype="float32")
    a32 = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    loss, grads = f32.value_and_grad(**a32)
    assert np.asarray(loss).dtype == np.float32
    assert all(v.dtype == np.float32 for v in grads.values())
    step = sb.compile(g, optimizer="sgd", lr=0.1, dtype="float32")
    params = step.init_params(0)
    assert math.isfinite(step.train_step(params, step.init_state(params), X=a32["X"], y=a32["y"]))
    assert all(v.dtype == np.float32 for v in params.values())


# -- value_and_grad on the memory-planned path ----------------------------------------------------
def _mlp_arrays(g, n, seed):
    return sb.testing.random_inputs(g, {"N": n}, seed=seed)


def test_value_and_grad_is_planned_for_arrays_and_plain_for_scalars():
    src = sb.numpy_source(sb.models.mlp([6, 5, 3]))
    vg = src[src.index("def value_and_grad"):src.index("def loss_and_grads_into")]
    assert "loss_and_grads_into(" in vg and "np.empty(" in vg and "_workspace" not in vg
    assert "def _workspace(N):" in src and "def _pack(" in src
    # no workspace where it buys nothing: all scalars, or optimization off
    for s in (sb.numpy_source(sb.parse("L = (w*x - y)**2"), wrt=["w"]),
              sb.numpy_source(sb.models.mlp([6, 5, 3]), optimize=False)):
        assert "loss_and_grads_into" not in s and "_workspace" not in s
        assert "# backward: gradients in reverse order of the forward pass" in s


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_planned_value_and_grad_results_belong_to_the_caller(dtype):
    """Two calls with different inputs: the first call's loss and gradients are unchanged
    by the second (nothing returned lives in the workspace), and both match the plain code."""
    g = sb.models.mlp([7, 6, 5, 3])
    fn, plain = sb.compile(g, dtype=dtype), sb.compile(g, dtype=dtype, optimize=False)
    assert "loss_and_grads_into" in fn.source
    a, b = _mlp_arrays(g, 4, 0), _mlp_arrays(g, 4, 1)
    loss_a, grads_a = fn.value_and_grad(**a)
    kept = (float(loss_a), {k: v.copy() for k, v in grads_a.items()})
    loss_b, grads_b = fn.value_and_grad(**b)
    assert float(loss_a) == kept[0] and float(loss_b) != kept[0]
    for k in grads_a:
        np.testing.assert_array_equal(grads_a[k], kept[1][k])
        assert not np.shares_memory(grads_a[k], grads_b[k])
        assert grads_a[k].dtype == np.dtype(dtype) and grads_a[k].flags.writeable
    rtol = 1e-5 if dtype == "float32" else 1e-12
    for arrays, (loss, grads) in ((a, (loss_a, grads_a)), (b, (loss_b, grads_b))):
        want_loss, want = plain.value_and_grad(**arrays)
        assert float(loss) == pytest.approx(float(want_loss), rel=rtol)
        for k in want:
            np.testing.assert_allclose(grads[k], want[k], rtol=rtol, atol=rtol * 1e-2)
    # another batch size: a second workspace, the first batch size's still right
    c = _mlp_arrays(g, 9, 2)
    assert fn.value_and_grad(**c)[1]["W1"].shape == (7, 6)
    np.testing.assert_allclose(fn.value_and_grad(**a)[1]["W1"], kept[1]["W1"], rtol=rtol)


@pytest.mark.parametrize("spec", [
    lambda: sb.models.mlp([5, 8, 4], activation="tanh"),
    lambda: sb.models.mlp([4, 6, 3], activation="sigmoid", loss="mse"),
    lambda: sb.models.residual_mlp(5, 6, 3, 2),
    lambda: sb.models.logistic_regression(4),
], ids=["tanh", "sigmoid_mse", "residual", "logistic"])
def test_planned_value_and_grad_matches_finite_differences(spec):
    g = spec()
    assert "loss_and_grads_into" in sb.compile(g).source
    report = sb.check_grad(g, sizes={"N": 5}, seed=4)
    assert report.ok, report


def test_planned_value_and_grad_shared_gradient_node():
    """Two parameters whose gradient is one node (both arguments of an add) get it both."""
    g = sb.Graph(name="shared")
    x = g.input("x", shape=("N", 3))
    w0, w1 = g.param("w0", shape=(3,)), g.param("w1", shape=(3,))
    g.output("L", sb.mean(sb.tanh(x * (w0 + w1))))
    fn = sb.compile(g)
    assert "loss_and_grads_into" in fn.source
    arrays = sb.testing.random_inputs(g, {"N": 4}, seed=0)
    _, grads = fn.value_and_grad(**arrays)
    _, want = sb.compile(g, optimize=False).value_and_grad(**arrays)
    for k in ("w0", "w1"):
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-12)
