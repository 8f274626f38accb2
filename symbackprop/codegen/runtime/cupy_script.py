"""What the CuPy training script adds to the NumPy script's runtime
(``sb.training_script(g, backend="cupy")``, :mod:`symbackprop.codegen.script`).

The script's step runs on the GPU; its data, shuffling order and checkpoints stay NumPy
arrays on the host (the ``device`` variants of :mod:`.script`: ``cp.asarray`` of the data
once, of each epoch's order once; ``cp.asnumpy`` into the checkpoints). The initial
parameters are the NumPy script's: :class:`HostGenerator` makes ``init_params``' draws
with the script's NumPy generator on the host and copies them to the GPU, so the same
seed gives the NumPy script's initial parameters and, the generator moved on as far, its
shuffling order. With dropout, :class:`HostDraws` does the same for the masks: their
uniform draws are the NumPy script's generator's (``BUFFERS["rng"]``, whose state the
checkpoints keep as the NumPy script's do), made on the host and copied to the GPU.

Here ``cp`` is NumPy, so that this module imports, and its tests run, on a machine
without a GPU; the generated script imports cupy as cp. HostGenerator is copied with the
step's code (which writes no ``np.``); HostDraws, which makes a NumPy generator, with the
host's.
"""

from __future__ import annotations

import numpy as cp  # stands in for CuPy here; the generated script imports cupy as cp
import numpy as np


class HostGenerator(cp.random.Generator):
    """A cupy.random.Generator whose draws a NumPy Generator makes on the host, copied to
    the GPU: init_params (which takes a cupy Generator as it is) then draws the NumPy
    script's initial parameters for the same seed, and moves the NumPy generator on as
    the NumPy script's init_params does. It has only the two draws init_params makes."""

    def __init__(self, rng):  # nothing is drawn on the GPU: no CuPy bit generator
        self.rng = rng

    def standard_normal(self, size=None):
        return cp.asarray(self.rng.standard_normal(size=size))

    def uniform(self, low=0.0, high=1.0, size=None):
        return cp.asarray(self.rng.uniform(low, high, size=size))


def no_device(cupy):
    """Why the CuPy module cupy can run nothing here, on one line (the first of CuPy's
    message), or None where it sees a CUDA device: CuPy imports without a driver or a GPU
    and fails only at its first allocation, with CUDA's traceback."""
    try:
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return None
    # CUDA's error (CUDARuntimeError: no driver, no device) or CuPy's loading a CUDA
    # library that is missing: either way there is no device to run on
    except (RuntimeError, ImportError, OSError) as e:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    return "it finds no CUDA device"


class HostDraws(HostGenerator):
    """Dropout's generator in the cupy script: the NumPy generator rng (a seed, or the
    script's BUFFERS["rng"], whose state the checkpoints keep) drawing the masks' uniform
    numbers on the host, copied to the GPU. The step's default_rng(rng) passes it
    through, as a cupy Generator, and its _dropout_mask calls only random(): the masks are
    the NumPy script's, and a resumed run draws the uninterrupted run's. The price: each
    mask is drawn by the CPU and copied to the GPU, every step."""

    def __init__(self, rng):
        super().__init__(np.random.default_rng(rng))  # a NumPy Generator passes through

    def random(self, size=None, dtype=np.float64):
        return cp.asarray(self.rng.random(size, dtype=dtype))
