"""Progress bars on stderr: one look for every long step (tqdm, imported only when shown)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any


def dask_progress(progress: bool, desc: str) -> AbstractContextManager[Any]:
    """A context manager that shows a bar for the dask computations inside it, if ``progress``.

    The plain tqdm class, not ``tqdm.auto``, which may pick a notebook widget and warn
    outside Jupyter.

    Examples
    --------
    >>> import dask.array as da
    >>> with dask_progress(False, "sum"):
    ...     int(da.ones(4, chunks=2).sum().compute())
    4
    """
    if not progress:
        return nullcontext()
    from tqdm.dask import TqdmCallback
    from tqdm.std import tqdm

    bar: AbstractContextManager[Any] = TqdmCallback(desc=desc, tqdm_class=tqdm)
    return bar


__all__ = ["dask_progress"]
