"""GPU check of issue 15: the generated training step on a GPU against PyTorch eager.

On a CUDA machine it times network A (784-256-256-256-10, relu, softmax cross-entropy,
SGD) at batch 1024 with the generated step of each GPU backend that is installed and
has code (``cupy``, ``jax``, ``torch``; a backend that ``sb.source`` does not know yet,
or whose library is missing, is skipped with the reason), next to PyTorch eager with
autograd on the same GPU, in float32 and, where the backend has it, in mixed precision
(float16 forward and backward, float32 masters, loss scaling; PyTorch eager: autocast
and GradScaler). Before timing, it checks on the GPU that each generated step gives the
NumPy backend's loss and gradients (float64 where the backend has it), that five CuPy
training steps give NumPy's parameters, and that the CuPy training script (``train-script
--backend cupy``: 2 epochs on 512 rows, then a resumed run) trains as the NumPy script,
and so does a small CNN with dropout on the same rows as images (its masks: NumPy's draws).

Timing: every contender runs in blocks of ``--block`` seconds, interleaved, in a fresh
order every round, until ``--seconds`` are spent (at least 3 rounds); every step ends by
reading its loss back to the host (the GPU work is finished when the time is taken). The
ratios are to PyTorch eager float32 in the same round: their median and their spread
(smallest and largest over the rounds).

    python benchmarks/gpu_check.py --out gpu.json                 # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --sizes 32,16,10 --batch 64 --seconds 5 \\
        --out smoke.json                                          # the smoke test's run

``--device cpu`` runs the same contenders on the CPU (CuPy skipped: it has no CPU
device; the NumPy backend joins) so that the script itself is tested without a GPU.
It prints the card's name (PyTorch's ``get_device_name``, ``nvidia-smi``) and writes
everything to ``--out`` as JSON. It is not run by ``make test`` (docs/performance.md,
"GPU checks").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's symbackprop
import symbackprop as sb
from symbackprop.codegen import backends


class Skip(Exception):
    """A contender that cannot run here, with the reason."""


# -- devices ---------------------------------------------------------------------------------
def card(device: str) -> dict:
    """The machine and, on CUDA, the card's name from PyTorch and nvidia-smi."""
    out = {"device": device, "python": platform.python_version(), "host": platform.node(),
           "numpy": np.__version__}
    for lib in ("torch", "cupy", "jax"):
        with contextlib.suppress(Exception):
            out[lib] = __import__(lib).__version__
    if device == "cuda":
        with contextlib.suppress(Exception):
            import torch

            out["torch_device_name"] = torch.cuda.get_device_name(0)
        if shutil.which("nvidia-smi"):
            with contextlib.suppress(Exception):
                r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True,
                                   timeout=20, check=False)
                out["nvidia_smi"] = r.stdout.strip()
    return out


def _torch_device(device: str):
    try:
        import torch
    except ImportError:
        raise Skip("PyTorch is not installed") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("PyTorch sees no CUDA device")
    if device == "cpu":  # the smoke test: PyTorch's thread pool spins on a shared machine
        torch.set_num_threads(1)
    return torch, torch.device(device)


def _sync(device: str):
    """A function waiting for the device's queued work (reading a loss back does too)."""
    if device != "cuda":
        return lambda: None
    import torch

    return torch.cuda.synchronize


# -- contenders: each a function running one training step and returning the loss ----------
def torch_eager(g_sizes, p0, X, y, lr, device, mixed=False):
    """PyTorch eager with autograd: addmm, relu, cross_entropy, autograd.grad, p.sub_;
    mixed: autocast to float16 and a GradScaler (float32 parameters)."""
    torch, dev = _torch_device(device)
    names = [n for k in range(1, len(g_sizes)) for n in (f"W{k}", f"b{k}")]
    ps = [torch.tensor(p0[n], dtype=torch.float32, device=dev).requires_grad_(True)
          for n in names]
    Xt = torch.tensor(X, dtype=torch.float32, device=dev)
    yt = torch.tensor(y, dtype=torch.long, device=dev)
    depth = len(ps) // 2
    if mixed and device != "cuda":
        raise Skip("PyTorch's float16 autocast is for CUDA")
    scaler = torch.amp.GradScaler("cuda") if mixed else None

    def loss_of():
        h = Xt
        for k in range(depth):
            z = torch.addmm(ps[2 * k + 1], h, ps[2 * k])
            h = torch.relu(z) if k < depth - 1 else z
        return torch.nn.functional.cross_entropy(h, yt)

    if not mixed:
        def step():
            loss = loss_of()
            grads = torch.autograd.grad(loss, ps)
            with torch.no_grad():
                for p, gr in zip(ps, grads):
                    p.sub_(gr, alpha=lr)
            return loss.item()
        return step
    opt = torch.optim.SGD(ps, lr=lr)  # GradScaler unscales and skips through an optimizer

    def mixed_step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_of()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return mixed_step


def _library_arrays(backend: str, device: str, arrays: dict) -> dict:
    """The step's arrays on the device, as the backend's library holds them."""
    if backend == "cupy":
        import cupy

        return {k: cupy.asarray(v) for k, v in arrays.items()}
    if backend == "torch":
        torch, dev = _torch_device(device)
        return {k: torch.as_tensor(np.asarray(v)).to(dev) for k, v in arrays.items()}
    if backend == "jax":
        import jax

        return {k: jax.device_put(np.asarray(v)) for k, v in arrays.items()}
    return dict(arrays)


def _check_backend(backend: str, device: str) -> None:
    """Skip a backend that sb does not know (yet), that misses its library or the device."""
    try:
        sb.source(sb.parse("L = (w*x - y)**2", params=["w"]), backend=backend)
    except sb.CodegenError as e:
        raise Skip(str(e)) from None
    if backend == "cupy":
        if device != "cuda":
            raise Skip("CuPy runs on a CUDA GPU only")
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # noqa: BLE001 -- missing, or no driver: say which
            raise Skip(f"cupy: {type(e).__name__}: {e}") from None
    if backend == "jax":
        try:
            import jax
        except ImportError:
            raise Skip("JAX is not installed") from None
        if device == "cuda" and jax.default_backend() != "gpu":
            raise Skip(f"JAX runs on {jax.default_backend()}, not the GPU "
                       "(pip install 'jax[cuda12]')")
    if backend == "torch":
        _torch_device(device)


def generated(g, p0, X, y, lr, backend, device, precision="float32"):
    """The generated SGD training step of ``backend`` (sb.compile(optimizer="sgd")), its
    parameters, state and batch on the device."""
    _check_backend(backend, device)
    kw = {"precision": "mixed"} if precision == "mixed" else {"dtype": "float32"}
    try:
        step = sb.compile(g, optimizer="sgd", lr=lr, backend=backend, **kw)
    except (ValueError, sb.CodegenError) as e:  # mixed precision not written for it
        raise Skip(str(e).splitlines()[0]) from None
    master = {k: np.asarray(v, dtype=np.float32) for k, v in p0.items()}
    params = _library_arrays(backend, device, master)
    batch = _library_arrays(backend, device, {"X": X.astype(np.float32), "y": y})
    if backends.get(backend).functional:  # new parameters and state returned
        state = step.init_state(params)
        box = {"params": params, "state": state}

        def step_fn():
            loss, box["params"], box["state"] = step.train_step(box["params"], box["state"],
                                                                **batch)
            return float(loss)
        return step_fn
    state = step.init_state(params)

    def step_fn():
        return float(step.train_step(params, state, **batch))
    return step_fn


# -- correctness on the device ----------------------------------------------------------------
def _to_numpy(v):
    if hasattr(v, "get"):  # cupy
        return v.get()
    if hasattr(v, "detach"):  # torch
        return v.detach().cpu().numpy()
    return np.asarray(v)


def check_values(g, p0, X, y, backend, device) -> dict:
    """Loss and gradients of the generated value_and_grad on the device against the NumPy
    backend's: float64 where the backend has it (JAX's module would turn on 64-bit mode
    for the whole process: float32 there)."""
    _check_backend(backend, device)
    dtype = "float32" if backend == "jax" else "float64"
    arrays = {**{k: np.asarray(v, dtype=dtype) for k, v in p0.items()},
              "X": X.astype(dtype), "y": y}
    loss, grads = sb.compile(g, dtype=dtype).value_and_grad(**arrays)
    got_loss, got = sb.compile(g, dtype=dtype, backend=backend).value_and_grad(
        **_library_arrays(backend, device, arrays))
    err = max(float(np.max(np.abs(_to_numpy(got[k]) - grads[k])))
              / max(float(np.max(np.abs(grads[k]))), 1e-30) for k in grads)
    tol = 1e-4 if dtype == "float32" else 1e-9
    loss_err = abs(float(_to_numpy(got_loss)) - float(loss)) / abs(float(loss))
    return {"dtype": dtype, "grad_rel_err": err, "loss_rel_err": loss_err,
            "ok": err < tol and loss_err < tol}


def check_cupy_steps(g, p0, X, y, steps=5) -> dict:
    """Five float64 SGD steps of the CuPy training step (flat buffers, workspace, in-place
    update on the GPU) against the NumPy step's parameters."""
    import cupy

    ref = sb.compile(g, optimizer="sgd", lr=0.05)
    got = sb.compile(g, optimizer="sgd", lr=0.05, backend="cupy")
    p_ref = {k: np.array(v, dtype=np.float64) for k, v in p0.items()}
    p_gpu = {k: cupy.asarray(v) for k, v in p_ref.items()}
    s_ref, s_gpu = ref.init_state(p_ref), got.init_state(p_gpu)
    losses = []
    for _ in range(steps):
        losses.append((ref.train_step(p_ref, s_ref, X=X, y=y),
                       got.train_step(p_gpu, s_gpu, X=cupy.asarray(X), y=cupy.asarray(y))))
    err = max(float(np.max(np.abs(p_gpu[k].get() - p_ref[k]))) / float(np.max(np.abs(p_ref[k])))
              for k in p_ref)
    return {"param_rel_err": err, "losses": losses, "ok": err < 1e-9}


def check_cupy_script(g, X, y, seed, timeout=300) -> dict:
    """The CuPy training script (``sb.training_script(g, backend="cupy")``) on the GPU, in
    subprocesses on up to 512 rows (a quarter of them the test split), SGD in float64,
    batch 64: 2 epochs against the NumPy script's 2 epochs from the same seed (the same
    initial parameters and order: equal up to the GPU's rounding), and 1 epoch then
    ``--resume`` to 2 against the uninterrupted run (``bitwise``: to the bit)."""
    import tempfile

    n = min(len(X), 512)
    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.savez(d / "data.npz", X=X[:n * 3 // 4], y=y[:n * 3 // 4], X_test=X[n * 3 // 4:n],
                 y_test=y[n * 3 // 4:n])
        for backend in ("numpy", "cupy"):
            (d / f"train_{backend}.py").write_text(sb.training_script(
                g, optimizer="sgd", lr=0.05, batch_size=64, seed=seed, backend=backend))
        for name, backend, argv in (
                ("numpy", "numpy", ["--epochs", "2"]), ("cupy", "cupy", ["--epochs", "2"]),
                ("half", "cupy", ["--epochs", "1"]),
                ("resumed", "cupy", ["--epochs", "2", "--resume", str(d / "half.npz")])):
            start = time.perf_counter()
            r = subprocess.run([sys.executable, str(d / f"train_{backend}.py"), "--data",
                                str(d / "data.npz"), "--out", str(d / f"{name}.npz"), *argv],
                               capture_output=True, text=True, timeout=timeout, check=False)
            seconds[name] = time.perf_counter() - start
            if r.returncode:
                return {"ok": False, "failed": f"{name}: exit {r.returncode}: "
                        f"{(r.stderr or r.stdout).strip()[-800:]}", "seconds": seconds}
            with np.load(d / f"{name}.npz") as f:
                runs[name] = {k: f[k] for k in f.files if k.startswith("params/")}
            if name == "cupy":
                lines = r.stdout.splitlines()

    def rel(a, b):
        return max(float(np.max(np.abs(a[k] - b[k]))) / max(float(np.max(np.abs(b[k]))),
                                                             1e-30) for k in b)
    err, resume_err = rel(runs["cupy"], runs["numpy"]), rel(runs["resumed"], runs["cupy"])
    bitwise = all(np.array_equal(runs["resumed"][k], runs["cupy"][k]) for k in runs["cupy"])
    return {"param_rel_err": err, "resume_rel_err": resume_err, "bitwise": bitwise,
            "lines": lines, "seconds": seconds, "ok": err < 1e-9 and resume_err < 1e-12}


# -- timing -------------------------------------------------------------------------------------
def interleave(fns: dict, seconds: float, block: float, rng: random.Random) -> dict:
    """Per-step times of every function, in blocks of ``block`` seconds (the first tenth
    discarded), a fresh order each round, until ``seconds`` are spent (3 rounds at least).
    Returns name -> the median step time of each round."""
    rounds = {name: [] for name in fns}
    end = time.perf_counter() + seconds
    done = 0
    while done < 3 or time.perf_counter() < end:
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            f = fns[name]
            start = time.perf_counter()
            while time.perf_counter() - start < block / 10:
                f()
            ts, stop = [], time.perf_counter() + block * 0.9
            while True:
                t0 = time.perf_counter()
                f()
                t1 = time.perf_counter()
                ts.append(t1 - t0)
                if t1 >= stop:
                    break
            rounds[name].append(statistics.median(ts))
        done += 1
    return rounds


def summary(rounds: dict, reference: str) -> dict:
    """Median step time of each contender and its ratio to ``reference`` round by round:
    the median ratio and its spread (smallest, largest)."""
    out = {}
    for name, ts in rounds.items():
        row = {"median_ms": 1e3 * statistics.median(ts), "rounds": len(ts)}
        if reference in rounds:
            r = [t / s for t, s in zip(ts, rounds[reference])]
            row.update(ratio=statistics.median(r), ratio_min=min(r), ratio_max=max(r))
        out[name] = row
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--seconds", type=float, default=120.0,
                   help="time spent timing, all contenders together (default 120)")
    p.add_argument("--block", type=float, default=1.0, help="seconds per block (default 1)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--sizes", default="784,256,256,256,10", help="layer widths (network A)")
    p.add_argument("--backends", default="cupy,jax,torch",
                   help="generated backends to time (the numpy backend joins on --device cpu)")
    p.add_argument("--no-mixed", action="store_true", help="float32 only")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    g = sb.models.mlp(sizes, activation="relu")
    rng = np.random.default_rng(a.seed)
    p0 = sb.compile(g, optimizer="sgd").init_params(a.seed)
    X = rng.standard_normal((a.batch, sizes[0]))
    y = rng.integers(0, sizes[-1], a.batch)
    lr = 0.01
    backends = [b for b in a.backends.split(",") if b]
    if a.device == "cpu" and "numpy" not in backends:
        backends.append("numpy")
    res = {"machine": card(a.device), "network": "-".join(map(str, sizes)), "batch": a.batch,
           "optimizer": "sgd", "skipped": {}, "checks": {}}
    print(f"device: {a.device}  " + ", ".join(f"{k} {v}" for k, v in res["machine"].items()
                                               if k in ("torch_device_name", "nvidia_smi")))

    for b in backends:  # correctness first, on the device
        try:
            res["checks"][f"{b} value_and_grad"] = check_values(g, p0, X[:64], y[:64], b,
                                                                 a.device)
        except Skip as e:
            res["skipped"][f"{b} check"] = str(e)
    if "cupy" in backends and "cupy check" not in res["skipped"]:
        res["checks"]["cupy train_step"] = check_cupy_steps(g, p0, X[:64], y[:64])
        res["checks"]["cupy training script"] = check_cupy_script(g, X, y, a.seed)
        side = math.isqrt(sizes[0])  # X's first side**2 columns as one-channel images
        if side >= 2:  # dropout: the masks NumPy's draws, copied (HostDraws)
            drop = sb.models.cnn((1, side, side), channels=(4,), hidden=(32,),
                                 classes=sizes[-1], dropout=0.2)
            res["checks"]["cupy training script, dropout"] = check_cupy_script(
                drop, X[:, :side * side].reshape(-1, 1, side, side), y, a.seed)
    elif "cupy" in backends:
        res["skipped"]["cupy training script"] = res["skipped"]["cupy check"]
    for name, c in res["checks"].items():
        print(f"check {name}: {'ok' if c['ok'] else 'MISMATCH'}  "
              + ", ".join(f"{k} {v:.2e}" for k, v in c.items() if k.endswith("err"))
              + (f"  {c['failed']}" if "failed" in c else ""))

    fns = {}
    precisions = ["float32"] + ([] if a.no_mixed else ["mixed"])
    makers = [(f"pytorch eager {p}", lambda p=p: torch_eager(sizes, p0, X, y, lr, a.device,
                                                              mixed=p == "mixed"))
              for p in precisions]
    makers += [(f"{b} {p}", lambda b=b, p=p: generated(g, p0, X, y, lr, b, a.device, p))
               for b in backends for p in precisions]
    for name, make in makers:
        try:
            f = make()
            f()  # compile, warm up (CuPy compiles its kernels on first use)
            fns[name] = f
        except Skip as e:
            res["skipped"][name] = str(e)
        except Exception as e:  # noqa: BLE001 -- a contender that fails is reported, not fatal
            res["skipped"][name] = f"failed: {type(e).__name__}: {e}"
    for name, why in res["skipped"].items():
        print(f"skipped {name}: {why}")
    rounds = interleave(fns, a.seconds, a.block, random.Random(a.seed))
    res["rounds_s"] = rounds
    res["results"] = summary(rounds, "pytorch eager float32")
    mixed_vs = {}
    for name in rounds:  # mixed precision against the same contender's float32
        if name.endswith(" mixed") and name[:-6] + " float32" in rounds:
            r = [m / f for m, f in zip(rounds[name], rounds[name[:-6] + " float32"])]
            mixed_vs[name[:-6]] = {"ratio": statistics.median(r), "ratio_min": min(r),
                                   "ratio_max": max(r)}
    res["mixed_vs_float32"] = mixed_vs
    print(f"\n{'contender':<28}{'ms/step':>10}{'/eager f32':>12}  spread")
    for name, r in res["results"].items():
        ratio = (f"{r['ratio']:>12.2f}  {r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
                 if "ratio" in r else "")
        print(f"{name:<28}{r['median_ms']:>10.3f}{ratio}")
    for name, r in mixed_vs.items():
        print(f"{name}: mixed/float32 {r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0 if all(c["ok"] for c in res["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
