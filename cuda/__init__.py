"""GPU-direct transfer kernels (see cuda/README.md)."""
