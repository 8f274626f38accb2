"""The atomic file write of every generated training script's checkpoints (NumPy, JAX and
torch scripts alike): one function, which each script copies
(:func:`~symbackprop.codegen.runtime.source_of`) beside its own ``save_checkpoint``.
"""

import os
import tempfile


def atomic_write(path, write):
    """Call write(f) on a new file in path's folder, flush and fsync it, then move it onto
    path (os.replace): an interruption leaves the old file or the new one, never half a
    file. On any error the temporary file is removed and the error raised again."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix=".checkpoint-", suffix=os.path.splitext(path)[1] or ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
