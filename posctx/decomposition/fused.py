"""Deprecated home of the compiled slab kernel: it moved to :mod:`posctx.fused`.

The statistics kept during extraction (:mod:`posctx.sums`) use the kernel too, and sit below
the decomposition. Every name still resolves here, with a FutureWarning; see
``docs/changes.md``.
"""

from __future__ import annotations

from posctx._deprecated import moved_names

__getattr__ = moved_names(
    __name__,
    {
        name: f"posctx.fused:{name}"
        for name in ("COMPILED_DTYPES", "KERNEL_ENV", "kernel_name", "slab_kernel")
    },
)
