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
