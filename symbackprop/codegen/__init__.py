"""NumPy code generation: expression printer and module emitter."""
