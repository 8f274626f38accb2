"""Cases of the op harness (tests/test_ops_grad.py) for convolution and pooling, with
references written as plain loops over every output entry: independent of the
generated code's windows and matrix products. Used by test_ops_grad.DOMAINS and
tests/test_conv.py."""

from __future__ import annotations

import itertools

import numpy as np


def _t(v, d):
    return (v,) * d if isinstance(v, int) else tuple(v)


def _padded(x, padding, value=0.0):
    d = x.ndim - 2
    p = _t(padding, d)
    xp = np.full(x.shape[:2] + tuple(s + 2 * q for s, q in zip(x.shape[2:], p)), value)
    xp[(slice(None), slice(None)) + tuple(slice(q, q + s) for q, s in zip(p, x.shape[2:]))] = x
    return xp


def _out_sizes(size, kernel, s, p, dl):
    return tuple((n + 2 * q - e * (k - 1) - 1) // t + 1
                 for n, k, t, q, e in zip(size, kernel, s, p, dl))


def conv_ref(x, w, stride=1, padding=0, dilation=1, groups=1):
    """y[n, o, pos] = sum over c, k of xp[n, group(o)·C/groups + c, pos·s + k·d] w[o, c, k]."""
    d = x.ndim - 2
    s, p, dl = _t(stride, d), _t(padding, d), _t(dilation, d)
    xp = _padded(x, p)
    cg, cog = w.shape[1], w.shape[0] // groups
    out = _out_sizes(x.shape[2:], w.shape[2:], s, p, dl)
    y = np.zeros((x.shape[0], w.shape[0]) + out)
    for n, o in itertools.product(range(x.shape[0]), range(w.shape[0])):
        for pos in itertools.product(*map(range, out)):
            acc = 0.0
            for c in range(cg):
                for k in itertools.product(*map(range, w.shape[2:])):
                    at = tuple(q * t + kk * e for q, t, kk, e in zip(pos, s, k, dl))
                    acc += xp[(n, (o // cog) * cg + c) + at] * w[(o, c) + k]
            y[(n, o) + pos] = acc
    return y


def conv_grad_input_ref(g, w, stride=1, padding=0, dilation=1, groups=1, size=None):
    """dL/dx as a scatter: each g[n, o, pos] w[o, c, k] added at xp[.., pos·s + k·d]."""
    d = g.ndim - 2
    s, p, dl = _t(stride, d), _t(padding, d), _t(dilation, d)
    cg, cog = w.shape[1], w.shape[0] // groups
    xp = np.zeros((g.shape[0], cg * groups) + tuple(n + 2 * q for n, q in zip(size, p)))
    for n, o in itertools.product(range(g.shape[0]), range(g.shape[1])):
        for pos in itertools.product(*map(range, g.shape[2:])):
            for c in range(cg):
                for k in itertools.product(*map(range, w.shape[2:])):
                    at = tuple(q * t + kk * e for q, t, kk, e in zip(pos, s, k, dl))
                    xp[(n, (o // cog) * cg + c) + at] += g[(n, o) + pos] * w[(o, c) + k]
    return xp[(slice(None), slice(None)) + tuple(slice(q, q + m) for q, m in zip(p, size))]


def conv_grad_weight_ref(x, g, stride=1, padding=0, dilation=1, groups=1, kernel=None):
    """dL/dw[o, c, k] = sum over n, pos of g[n, o, pos] xp[n, group(o)·C/groups + c, pos·s + k·d]."""
    d = x.ndim - 2
    s, p, dl = _t(stride, d), _t(padding, d), _t(dilation, d)
    xp = _padded(x, p)
    cg, cog = x.shape[1] // groups, g.shape[1] // groups
    dw = np.zeros((g.shape[1], cg) + tuple(kernel))
    for o, c in itertools.product(range(g.shape[1]), range(cg)):
        for k in itertools.product(*map(range, kernel)):
            acc = 0.0
            for n in range(x.shape[0]):
                for pos in itertools.product(*map(range, g.shape[2:])):
                    at = tuple(q * t + kk * e for q, t, kk, e in zip(pos, s, k, dl))
                    acc += g[(n, o) + pos] * xp[(n, (o // cog) * cg + c) + at]
            dw[(o, c) + k] = acc
    return dw


def _pool_windows(x, k, stride, padding, value):
    k = _t(k, 2)
    s = k if stride is None else _t(stride, 2)
    p = _t(padding, 2)
    xp = _padded(x, p, value)
    out = _out_sizes(x.shape[2:], k, s, p, (1, 1))
    for i, j in itertools.product(*map(range, out)):
        yield (i, j), (i * s[0], j * s[1]), xp[:, :, i * s[0]:i * s[0] + k[0],
                                              j * s[1]:j * s[1] + k[1]], xp.shape, p


def pool_ref(reduce, x, k=2, stride=None, padding=0):
    value = -np.inf if reduce == "max" else 0.0
    k2 = _t(k, 2)
    s = k2 if stride is None else _t(stride, 2)
    out = _out_sizes(x.shape[2:], k2, s, _t(padding, 2), (1, 1))
    y = np.zeros(x.shape[:2] + out)
    for (i, j), _, win, _, _ in _pool_windows(x, k, stride, padding, value):
        for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
            vals = [win[n, c, a, b] for a in range(k2[0]) for b in range(k2[1])]
            y[n, c, i, j] = max(vals) if reduce == "max" else sum(vals) / len(vals)
    return y


def max_pool_grad_ref(x, g, k=2, stride=None, padding=0):
    """Each g to the first maximum of its window (row-major), added where windows overlap."""
    k2 = _t(k, 2)
    p = _t(padding, 2)
    dxp = None
    for (i, j), (r, c0), win, shape, _ in _pool_windows(x, k, stride, padding, -np.inf):
        dxp = np.zeros(shape) if dxp is None else dxp
        for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
            vals = [win[n, c, a, b] for a in range(k2[0]) for b in range(k2[1])]
            a = vals.index(max(vals))  # the first maximum
            dxp[n, c, r + a // k2[1], c0 + a % k2[1]] += g[n, c, i, j]
    return dxp[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3]]


def avg_pool_grad_ref(g, k=2, stride=None, padding=0, size=None):
    k2 = _t(k, 2)
    s = k2 if stride is None else _t(stride, 2)
    p = _t(padding, 2)
    dxp = np.zeros(g.shape[:2] + (size[0] + 2 * p[0], size[1] + 2 * p[1]))
    for i, j in itertools.product(range(g.shape[2]), range(g.shape[3])):
        dxp[:, :, i * s[0]:i * s[0] + k2[0], j * s[1]:j * s[1] + k2[1]] += \
            g[:, :, i:i + 1, j:j + 1] / (k2[0] * k2[1])
    return dxp[:, :, p[0]:p[0] + size[0], p[1]:p[1] + size[1]]


# (x shape, w shape, attrs, id): stride, padding, dilation, groups, odd sizes, a symbolic
# batch, and a stride that leaves the last rows in no window (their gradient is 0)
CONV2D = [
    ((2, 3, 5, 5), (4, 3, 3, 3), {}, "plain"),
    ((2, 3, 7, 7), (4, 3, 3, 3), {"stride": 2, "padding": 1}, "stride2-pad1"),
    ((2, 3, 7, 6), (2, 3, 2, 3), {"dilation": 2, "padding": (1, 0)}, "dilation2"),
    ((2, 4, 5, 6), (6, 2, 3, 2), {"groups": 2, "stride": (2, 1)}, "groups2"),
    ((2, 3, 6, 5), (6, 1, 2, 2), {"groups": 3, "stride": (1, 2), "padding": 1},
     "depthwise"),
    (("N", 2, 5, 5), (3, 2, 3, 3), {"padding": 1}, "batchN"),
    ((2, 3, 7, 7), (2, 3, 3, 3), {"stride": 3}, "stride3-unreached"),
    ((2, 2, 6, 7), (4, 1, 3, 2), {"stride": 2, "padding": (2, 1), "dilation": (1, 2),
                                  "groups": 2}, "all"),
]
CONV1D = [
    ((2, 3, 9), (4, 3, 3), {}, "plain"),
    ((2, 3, 9), (4, 3, 3), {"stride": 2, "padding": 1, "dilation": 2}, "s2-p1-d2"),
    ((2, 3, 8), (3, 1, 2), {"groups": 3, "stride": 3}, "depthwise"),
]
MAX_POOL = [
    ((2, 3, 6, 6), {"k": 2}, "k2"),
    ((2, 3, 7, 7), {"k": 3, "stride": 2, "padding": 1}, "overlap-pad"),
    ((2, 3, 5, 7), {"k": (2, 3), "stride": (1, 2)}, "rect-overlap"),
]
AVG_POOL = [
    ((2, 3, 6, 6), {"k": 2}, "k2"),
    ((2, 3, 5, 5), {"k": 3, "stride": 1, "padding": 1}, "overlap-pad"),
    ((2, 3, 5, 7), {"k": (2, 3), "stride": (1, 2)}, "rect-overlap"),
]


def _shape(x, w, attrs):
    import symbackprop as sb

    g = sb.Graph()
    op = sb.conv1d if len(x) == 3 else sb.conv2d
    return op(g.input("x", shape=x), g.input("w", shape=w), **attrs).shape


def _pool_out(x, attrs):
    import symbackprop as sb

    g = sb.Graph()
    return sb.max_pool2d(g.input("x", shape=x), **attrs).shape


def domains(Case) -> dict:
    """The harness's DOMAINS entries for these ops, as ``Case`` objects."""
    conv = lambda rows: [Case([(x, "real"), (w, "real")], a, ref=conv_ref, id=i)
                         for x, w, a, i in rows]
    grad_in = [Case([(_shape(x, w, a), "real"), (w, "real")],
                    {**a, "size": tuple(x[2:])}, ref=conv_grad_input_ref, id=i)
               for x, w, a, i in CONV2D + CONV1D]
    grad_w = [Case([(x, "real"), (_shape(x, w, a), "real")],
                   {**a, "kernel": tuple(w[2:])}, ref=conv_grad_weight_ref, id=i)
              for x, w, a, i in CONV2D + CONV1D]
    return {
        "conv2d": conv(CONV2D),
        "conv1d": conv(CONV1D),
        "conv_grad_input": grad_in,
        "conv_grad_weight": grad_w,
        "max_pool2d": [Case([(x, "real")], a, ref=lambda v, **a: pool_ref("max", v, **a), id=i)
                       for x, a, i in MAX_POOL],
        "avg_pool2d": [Case([(x, "real")], a, ref=lambda v, **a: pool_ref("avg", v, **a), id=i)
                       for x, a, i in AVG_POOL],
        "max_pool2d_grad": [Case([(x, "real"), (_pool_out(x, a), "real")], a,
                                 ref=max_pool_grad_ref, id=i) for x, a, i in MAX_POOL],
        "avg_pool2d_grad": [Case([(_pool_out(x, a), "real")], {**a, "size": tuple(x[2:])},
                                 ref=avg_pool_grad_ref, id=i) for x, a, i in AVG_POOL],
    }
