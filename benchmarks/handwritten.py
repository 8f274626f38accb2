"""Hand-written NumPy contenders for the benchmark, generic over depth, width and activation.

Every contender trains the same softmax cross-entropy MLP: ``sizes = [n_in, h1, ..., n_out]``,
parameters ``W1, b1, ..., WL, bL`` (``Wk`` is (in, out), as in ``sb.models.mlp``), the
activation (``relu`` or ``tanh``) after every layer but the last, mean cross-entropy over the
batch, and plain SGD ``w <- w - lr * dL/dw``. ``step(X, y)`` runs forward, backward and the
update in place and returns the loss.

- :class:`Idiomatic` is what a careful person writes in plain NumPy.
- :class:`Tuned` is what the same person writes when chasing speed: buffers allocated once per
  batch size and reused (``out=``), the fused softmax/cross-entropy gradient ``(P - onehot)/N``
  computed in place (and scaled by the learning rate, so every gradient below it comes out
  as ``lr * gradient`` and the update is one subtraction), in-place activations and masks.
- :class:`Floor` runs only the step's matrix products, into preallocated buffers: no NumPy
  implementation of the step can be faster than this.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("relu", "tanh")


def init_params(sizes, activation: str, dtype, rng) -> dict:
    """He (ReLU) or Glorot-like (tanh) weights and small random biases, keyed W1, b1, ..."""
    params = {}
    for k in range(1, len(sizes)):
        n_in, n_out = sizes[k - 1], sizes[k]
        scale = np.sqrt((2.0 if activation == "relu" else 1.0) / n_in)
        params[f"W{k}"] = (rng.standard_normal((n_in, n_out)) * scale).astype(dtype)
        params[f"b{k}"] = (rng.standard_normal(n_out) * 0.1).astype(dtype)
    return params


def make_batch(sizes, n: int, dtype, rng):
    """A fixed random minibatch: features (n, sizes[0]) and integer labels (n,)."""
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], size=n).astype(np.int64)
    return X, y


class _MLP:
    """Parameters as two lists of arrays (updated in place), shared by the hand-written steps."""

    def __init__(self, params: dict, activation: str, lr: float):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
        depth = len(params) // 2
        self.W = [params[f"W{k}"].copy() for k in range(1, depth + 1)]
        self.b = [params[f"b{k}"].copy() for k in range(1, depth + 1)]
        self.activation, self.lr = activation, lr

    def params(self) -> dict:
        out = {}
        for k, (W, b) in enumerate(zip(self.W, self.b), 1):
            out[f"W{k}"], out[f"b{k}"] = W, b
        return out


class Idiomatic(_MLP):
    """Plain NumPy: ``@``, ``np.maximum``, stable softmax, cross-entropy, backward by hand."""

    def step(self, X, y):
        W, b, lr = self.W, self.b, self.lr
        relu = self.activation == "relu"
        hs = [X]
        for Wk, bk in zip(W[:-1], b[:-1]):
            z = hs[-1] @ Wk + bk
            hs.append(np.maximum(z, 0) if relu else np.tanh(z))
        logits = hs[-1] @ W[-1] + b[-1]
        n = len(y)
        # stable softmax and cross-entropy
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) - shifted[np.arange(n), y])
        P = e / s
        onehot = np.eye(logits.shape[1], dtype=logits.dtype)[y]
        dz = (P - onehot) / n
        for k in reversed(range(len(W))):
            dW = hs[k].T @ dz
            db = dz.sum(axis=0)
            if k > 0:
                dh = dz @ W[k].T
                dz = dh * (hs[k] > 0) if relu else dh * (1 - hs[k] ** 2)
            W[k] -= lr * dW
            b[k] -= lr * db
        return loss


class Tuned(_MLP):
    """NumPy with preallocated ``out=`` buffers, a fused in-place softmax/CE gradient and
    in-place updates. Buffers are allocated on the first step for each batch size.

    The output gradient ``(P - onehot) / N`` is scaled by ``lr`` at once: backprop is linear
    in it, so ``dW``, ``db`` come out as ``lr * gradient`` and ``W -= dW`` is the update.
    """

    def __init__(self, params: dict, activation: str, lr: float):
        super().__init__(params, activation, lr)
        self._buffers = {}

    def _get(self, n: int, dtype):
        key = (n, np.dtype(dtype))
        if key not in self._buffers:
            widths = [W.shape[1] for W in self.W]
            hidden = widths[:-1]
            self._buffers[key] = {
                "H": [np.empty((n, w), dtype) for w in widths],  # z, then h in place
                "D": [np.empty((n, w), dtype) for w in hidden],  # dh, then dz in place
                "T": [np.empty((n, w), bool if self.activation == "relu" else dtype)
                      for w in hidden],  # relu mask, or tanh' = 1 - h**2
                "P": np.empty((n, widths[-1]), dtype),  # softmax, then (P - onehot) * lr / n
                "m": np.empty((n, 1), dtype),
                "s": np.empty((n, 1), dtype),
                "dW": [np.empty_like(W) for W in self.W],
                "db": [np.empty_like(b) for b in self.b],
                "rows": np.arange(n),
            }
        return self._buffers[key]

    def step(self, X, y):
        B = self._get(len(y), X.dtype)
        return self._run(X, y, B, self.lr, B["dW"], B["db"], update=True)

    def value_and_grad(self, X, y):
        """The loss and the gradients ``{"W1": ..., "b1": ...}``, new arrays the caller owns
        (every intermediate in the reused buffers), parameters unchanged: the job of the
        generated ``value_and_grad``."""
        B = self._get(len(y), X.dtype)
        dW, db = [np.empty_like(W) for W in self.W], [np.empty_like(b) for b in self.b]
        loss = self._run(X, y, B, 1.0, dW, db, update=False)
        grads = {}
        for k, (gW, gb) in enumerate(zip(dW, db), 1):
            grads[f"W{k}"], grads[f"b{k}"] = gW, gb
        return loss, grads

    def _run(self, X, y, B, lr, dW, db, update):
        """Forward and backward into ``dW``, ``db`` (scaled by ``lr``), then the update of
        each layer right after its gradients when ``update``."""
        W, b = self.W, self.b
        n = len(y)
        H, D, T, P, m, s, rows = (B[k] for k in ("H", "D", "T", "P", "m", "s", "rows"))
        depth = len(W)
        relu = self.activation == "relu"
        h = X
        for k in range(depth):
            z = H[k]
            np.matmul(h, W[k], out=z)
            z += b[k]
            if k < depth - 1:
                if relu:
                    np.maximum(z, 0, out=z)
                else:
                    np.tanh(z, out=z)
            h = z
        logits = h
        # fused softmax + cross-entropy, gradient (P - onehot) / n built in place in P
        np.max(logits, axis=1, keepdims=True, out=m)
        np.subtract(logits, m, out=P)
        picked = P[rows, y]  # logit of the label minus the row max
        np.exp(P, out=P)
        np.sum(P, axis=1, keepdims=True, out=s)
        np.divide(P, s, out=P)
        np.log(s, out=s)
        loss = (s.sum() - picked.sum()) / n
        P[rows, y] -= 1
        P *= lr / n  # dz scaled by lr: every gradient below comes out as lr * gradient
        dz = P
        for k in reversed(range(depth)):
            h_in = X if k == 0 else H[k - 1]
            np.matmul(h_in.T, dz, out=dW[k])
            np.sum(dz, axis=0, out=db[k])
            if k > 0:  # dL/dh_in with the old W[k], then through the activation, in place
                dh = D[k - 1]
                np.matmul(dz, W[k].T, out=dh)
                t = T[k - 1]
                if relu:
                    np.greater(h_in, 0, out=t)
                else:
                    np.multiply(h_in, h_in, out=t)
                    np.subtract(1, t, out=t)
                np.multiply(dh, t, out=dh)
                dz = dh
            if update:
                W[k] -= dW[k]  # dW[k] already holds lr * dL/dW[k]
                b[k] -= db[k]
        return loss


class Floor:
    """Only the matrix products of one step (3L - 1 for L layers), into ``out=`` buffers.

    Forward ``h_{k-1} @ W_k`` for every layer; backward ``h_{k-1}.T @ dz_k`` for every layer
    and ``dz_k @ W_k.T`` for every layer but the first, in the order a step runs them. The
    operands are fixed random arrays of the right shapes, so values never drift.
    """

    def __init__(self, sizes, n: int, dtype, rng):
        L = len(sizes) - 1
        r = lambda *shape: rng.standard_normal(shape).astype(dtype)
        self.H = [r(n, sizes[k]) for k in range(L)]  # input of layer k+1
        self.W = [r(sizes[k], sizes[k + 1]) for k in range(L)]
        self.Z = [np.empty((n, sizes[k + 1]), dtype) for k in range(L)]
        self.dZ = [r(n, sizes[k + 1]) for k in range(L)]
        self.dW = [np.empty_like(W) for W in self.W]
        self.dH = [np.empty((n, sizes[k]), dtype) for k in range(L)]

    def step(self, X=None, y=None):
        H, W, Z, dZ, dW, dH = self.H, self.W, self.Z, self.dZ, self.dW, self.dH
        for k in range(len(W)):
            np.matmul(H[k], W[k], out=Z[k])
        for k in reversed(range(len(W))):
            np.matmul(H[k].T, dZ[k], out=dW[k])
            if k > 0:
                np.matmul(dZ[k], W[k].T, out=dH[k])


# -- workloads D and E: a CNN and a transformer block (issue 13) -----------------------------

CNN_PARAMS = ("K1", "c1", "K2", "c2", "W1", "b1", "W2", "b2")
BLOCK_PARAMS = ("Wq", "Wk", "Wv", "Wo", "W1", "b1", "W2", "b2")


def init_network(shapes: dict, dtype, rng) -> dict:
    """Random parameters for D and E: a weight (2 or more axes; the output axis first for a
    kernel (C_out, C_in, kh, kw), last for a matrix (in, out)) scaled by 1/sqrt(fan_in),
    He-like; a bias (one axis) small and random, so that its gradient is checked as
    well."""
    out = {}
    for k, shape in shapes.items():
        shape = tuple(shape)
        if len(shape) == 1:
            p = rng.standard_normal(shape) * 0.1
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
            p = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        out[k] = p.astype(dtype)
    return out


def _im2col(x, k: int, pad: int):
    """Windows of a zero-padded (N, C, H, W) as an (N*H'*W', C*k*k) matrix, stride 1."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # N,C,H',W',k,k
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k), (n, ho, wo)


def conv_forward(x, K, pad: int):
    """Convolution (cross-correlation) of x (N, C, H, W) with K (O, C, k, k), stride 1, by
    im2col and one matrix product; returns the output (N, O, H', W') and the im2col matrix."""
    cols, (n, ho, wo) = _im2col(x, K.shape[2], pad)
    out = cols @ K.reshape(K.shape[0], -1).T  # (N*H'*W', O)
    return out.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2), cols


def conv_backward(dout, cols, K, x_shape, pad: int, need_dx: bool = True):
    """Gradients of :func:`conv_forward`: dK from the im2col matrix, dx by col2im (one
    strided add per kernel offset, k*k of them)."""
    o, c, k, _ = K.shape
    d2 = dout.transpose(0, 2, 3, 1).reshape(-1, o)  # (N*H'*W', O)
    dK = (d2.T @ cols).reshape(K.shape)
    if not need_dx:
        return None, dK
    n, _, h, w = x_shape
    ho, wo = dout.shape[2:]
    dcols = (d2 @ K.reshape(o, -1)).reshape(n, ho, wo, c, k, k)
    dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dout.dtype)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + ho, j:j + wo] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, pad:pad + h, pad:pad + w], dK


def max_pool_forward(x, k: int):
    """Non-overlapping k x k max pooling of (N, C, H, W), H and W multiples of k; returns
    the output and each window's arg-max (first maximum in row-major order, as PyTorch)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // k, k, w // k, k).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, h // k, w // k, k * k)
    idx = win.argmax(axis=-1)[..., None]
    return np.take_along_axis(win, idx, axis=-1)[..., 0], idx


def max_pool_backward(dout, idx, x_shape, k: int):
    """δ of each window sent to its arg-max; zeros elsewhere."""
    n, c, h, w = x_shape
    dwin = np.zeros((*dout.shape, k * k), dout.dtype)
    np.put_along_axis(dwin, idx, dout[..., None], axis=-1)
    dwin = dwin.reshape(n, c, h // k, w // k, k, k).transpose(0, 1, 2, 4, 3, 5)
    return dwin.reshape(x_shape)


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of integer labels y and its gradient with respect to the logits."""
    n = len(y)
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(s[:, 0]) - shifted[np.arange(n), y])
    dz = e / s
    dz[np.arange(n), y] -= 1
    return loss, dz / n


class CNN:
    """The digits CNN of workload D in idiomatic NumPy (``benchmarks/networks.py``
    ``digits_cnn``): im2col convolutions (sliding_window_view + matmul), arg-max pooling,
    backward by hand, SGD in place. ``step(X, y)`` returns the loss."""

    def __init__(self, params: dict, lr: float):
        self.p = {k: params[k].copy() for k in CNN_PARAMS}
        self.lr = lr

    def params(self) -> dict:
        return self.p

    def step(self, X, y):
        p, lr = self.p, self.lr
        z1, cols1 = conv_forward(X, p["K1"], 1)
        h1 = np.maximum(z1 + p["c1"][:, None, None], 0)
        m1, i1 = max_pool_forward(h1, 2)
        z2, cols2 = conv_forward(m1, p["K2"], 1)
        h2 = np.maximum(z2 + p["c2"][:, None, None], 0)
        m2, i2 = max_pool_forward(h2, 2)
        f = m2.reshape(len(X), -1)
        a = np.maximum(f @ p["W1"] + p["b1"], 0)
        logits = a @ p["W2"] + p["b2"]
        loss, dz = softmax_cross_entropy(logits, y)
        g = {"W2": a.T @ dz, "b2": dz.sum(axis=0)}
        da = (dz @ p["W2"].T) * (a > 0)
        g["W1"], g["b1"] = f.T @ da, da.sum(axis=0)
        dm2 = (da @ p["W1"].T).reshape(m2.shape)
        dz2 = max_pool_backward(dm2, i2, h2.shape, 2) * (h2 > 0)
        g["c2"] = dz2.sum(axis=(0, 2, 3))
        dm1, g["K2"] = conv_backward(dz2, cols2, p["K2"], m1.shape, 1)
        dz1 = max_pool_backward(dm1, i1, h1.shape, 2) * (h1 > 0)
        g["c1"] = dz1.sum(axis=(0, 2, 3))
        _, g["K1"] = conv_backward(dz1, cols1, p["K1"], X.shape, 1, need_dx=False)
        for k, v in g.items():
            p[k] -= lr * v
        return loss


def layer_norm(x, eps: float = 1e-5):
    """(x - mean) / sqrt(var + eps) over the last axis; returns it and 1/sqrt(var + eps)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    return xc * rstd, rstd


def layer_norm_backward(dy, y, rstd):
    """Gradient of :func:`layer_norm` from its output y and 1/sqrt(var + eps)."""
    return rstd * (dy - dy.mean(axis=-1, keepdims=True)
                   - y * (dy * y).mean(axis=-1, keepdims=True))


class TransformerBlock:
    """The pre-norm transformer block of workload E in idiomatic NumPy (``benchmarks/
    networks.py`` ``transformer_block``): batched-matmul attention over (N, heads, T, d_head)
    stacks, backward by hand. ``value_and_grad(X)`` returns ``L = mean(out**2)`` and the
    gradients of every parameter, new arrays."""

    def __init__(self, params: dict, heads: int):
        self.p = {k: params[k].copy() for k in BLOCK_PARAMS}
        self.heads = heads

    def params(self) -> dict:
        return self.p

    def value_and_grad(self, X):
        p, H = self.p, self.heads
        n, t, d = X.shape
        dh = d // H
        scale = float(dh) ** -0.5  # a Python float: a NumPy float64 would upcast float32

        def split(m):  # (N*T, D) -> (N, H, T, dh)
            return m.reshape(n, t, H, dh).transpose(0, 2, 1, 3)

        def merge(m):  # (N, H, T, dh) -> (N*T, D)
            return m.transpose(0, 2, 1, 3).reshape(n * t, d)

        # every dense product on the (N*T, D) rows: one matrix product each, rather than
        # np.matmul's loop over N products of (T, D) by (D, D)
        x2 = X.reshape(n * t, d)
        a, _ = layer_norm(x2)  # X is an input: no gradient through this norm
        q, k, v = split(a @ p["Wq"]), split(a @ p["Wk"]), split(a @ p["Wv"])
        s = (q @ k.transpose(0, 1, 3, 2)) * scale
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        P = e / e.sum(axis=-1, keepdims=True)
        c = merge(P @ v)
        h = x2 + c @ p["Wo"]
        b, r2 = layer_norm(h)
        u = b @ p["W1"] + p["b1"]
        f = np.maximum(u, 0)
        out = h + f @ p["W2"] + p["b2"]
        loss = np.mean(out * out)

        dout = out * (2.0 / out.size)
        g = {"W2": f.T @ dout, "b2": dout.sum(axis=0)}
        du = (dout @ p["W2"].T) * (u > 0)
        g["W1"], g["b1"] = b.T @ du, du.sum(axis=0)
        dhid = dout + layer_norm_backward(du @ p["W1"].T, b, r2)
        g["Wo"] = c.T @ dhid
        dctx = split(dhid @ p["Wo"].T)
        dP = dctx @ v.transpose(0, 1, 3, 2)
        dv = P.transpose(0, 1, 3, 2) @ dctx
        ds = P * (dP - (dP * P).sum(axis=-1, keepdims=True)) * scale
        dq, dk = ds @ k, ds.transpose(0, 1, 3, 2) @ q
        g["Wq"], g["Wk"], g["Wv"] = (a.T @ merge(dm) for dm in (dq, dk, dv))
        return loss, g
