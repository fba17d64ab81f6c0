"""What Icechunk's transactions mean for posctx's block-by-block writes, checked.

    python bench/icechunk_isolation.py [--workdir DIR]

Small arrays in posctx's layout (``hidden`` with one chunk per block, NaN fill, no
compressor; ``block_complete`` with one chunk per block) in an Icechunk repository on local
filesystem storage. Each section asserts what it claims and prints it:

1. snapshot isolation: a reader opened at commit k never sees later blocks, even while a
   writer commits more; any earlier commit can be reopened (time travel);
2. a writer that fails before ``commit`` (an exception, or a process SIGKILLed between the
   data write and the commit) leaves the branch at the last commit, with none of its data
   visible; its chunk files stay on disk until garbage collection;
3. two uncoordinated writable sessions from the same snapshot: the second ``commit`` raises
   ``ConflictError``; ``rebase`` (or ``commit(rebase_with=...)``) with ``ConflictDetector``
   succeeds when the chunks are disjoint and fails (``RebaseFailedError``, a
   ``ChunkDoubleUpdate``) when both wrote the same chunk, unless ``BasicConflictSolver``
   picks a side;
4. cooperative writers: ``Session.fork`` gives picklable ``ForkSession``s that write in
   workers, ``Session.merge`` gathers them, and one ``commit`` publishes all;
5. rewriting a block (what a resume does) writes a new chunk file; the old one stays readable
   from the old snapshot and occupies disk until ``expire_snapshots`` + ``garbage_collect``;
6. posctx's own schema (``posctx.store.build_dataset``) written through xarray into a session
   (``to_zarr(session.store, compute=False)``, then a region write), read back with
   ``xr.open_zarr(readonly_session.store)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import sys
import warnings
from pathlib import Path

import numpy as np
import zarr

C, T, L, D = 4, 16, 2, 32  # contexts per block, positions, layers, dims: 16 KB per chunk
BLOCKS = 8


def say(title: str, text: str) -> None:
    print(f"[ok] {title}: {text}", flush=True)


def block(b: int) -> np.ndarray:
    return np.full((C, T, L, D), float(b + 1), dtype=np.float32)


def open_arrays(session) -> tuple[zarr.Array, zarr.Array]:
    group = zarr.open_group(session.store, mode="r" if session.read_only else "r+")
    return group["hidden"], group["block_complete"]


def write_block(session, b: int, value: np.ndarray | None = None) -> None:
    hidden, marker = open_arrays(session)
    hidden[b * C : (b + 1) * C] = block(b) if value is None else value
    marker[b] = 1


def visible(session) -> list[int]:
    """Blocks whose data a session sees (not NaN), checked against their markers."""
    hidden, marker = open_arrays(session)
    seen = [b for b in range(BLOCKS) if not np.isnan(hidden[b * C, 0, 0, 0])]
    assert seen == [b for b in range(BLOCKS) if marker[b] == 1], "data and marker disagree"
    return seen


def chunk_files(path: Path) -> int:
    return len(os.listdir(path / "chunks")) if (path / "chunks").exists() else 0


def killed_writer(path: str, b: int) -> None:
    """Child process: writes block b's data and marker, then is SIGKILLed before committing."""
    import icechunk as ic

    ic.set_logs_filter("error")
    repo = ic.Repository.open(ic.local_filesystem_storage(path))
    session = repo.writable_session("main")
    write_block(session, b)
    os.kill(os.getpid(), signal.SIGKILL)


def fork_worker(payload: bytes, b: int) -> bytes:
    """A 'remote' worker: receives a pickled ForkSession, writes block b, returns it pickled."""
    fork = pickle.loads(payload)
    write_block(fork, b)
    return pickle.dumps(fork)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/posctx-icechunk-isolation")
    args = parser.parse_args(argv)

    import icechunk as ic

    ic.set_logs_filter(
        "error"
    )  # silence the note that local storage is unsafe for concurrent commits
    print(f"icechunk {ic.__version__}, zarr {zarr.__version__}")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path = work / "repo"
    repo = ic.Repository.create(ic.local_filesystem_storage(str(path)))
    session = repo.writable_session("main")
    group = zarr.open_group(session.store, mode="w", zarr_format=3)
    group.create_array(
        "hidden",
        shape=(BLOCKS * C, T, L, D),
        chunks=(C, T, L, D),
        dtype="f4",
        compressors=None,
        fill_value=np.nan,
    )
    group.create_array("block_complete", shape=(BLOCKS,), chunks=(1,), dtype="u1", fill_value=0)
    snaps = [session.commit("create arrays")]

    # 1. Snapshot isolation and time travel.
    reader_tip = repo.readonly_session(branch="main")  # resolved now: the 'create' snapshot
    for b in range(3):
        s = repo.writable_session("main")
        write_block(s, b)
        snaps.append(s.commit(f"block {b}"))
    k = 1  # the commit that added block 0
    at_k = repo.readonly_session(snapshot_id=snaps[k])
    long_reader = repo.readonly_session(branch="main")  # at block 2's commit
    s = repo.writable_session("main")
    write_block(s, 3)
    snaps.append(s.commit("block 3"))
    assert visible(reader_tip) == []
    assert visible(at_k) == [0]
    assert visible(long_reader) == [0, 1, 2]
    assert visible(repo.readonly_session(branch="main")) == [0, 1, 2, 3]
    say(
        "1 isolation",
        "a reader opened on the branch keeps its snapshot while 2 more commits land "
        f"(saw {visible(reader_tip)}, then {visible(long_reader)} while the tip has [0, 1, 2, 3]); "
        f"readonly_session(snapshot_id=<commit {k}>) sees blocks {visible(at_k)}",
    )
    try:
        open_arrays(at_k)[0][0] = 0
    except Exception as exc:  # noqa: BLE001 - we only report what the store raises
        say("1 read-only", f"writing through a readonly session raises {type(exc).__name__}")
    else:
        raise AssertionError("a read-only session accepted a write")

    # 2. A writer that dies before commit.
    files0 = chunk_files(path)
    s = repo.writable_session("main")
    try:
        write_block(s, 4)
        assert visible(s) == [0, 1, 2, 3, 4]  # the writer sees its own uncommitted block
        raise RuntimeError("simulated failure before commit")
    except RuntimeError:
        pass
    assert repo.lookup_branch("main") == snaps[-1]
    assert visible(repo.readonly_session(branch="main")) == [0, 1, 2, 3]
    ctx = mp.get_context("forkserver")  # icechunk's docs: 'fork' can deadlock on its file locks
    p = ctx.Process(target=killed_writer, args=(str(path), 5))
    p.start()
    p.join()
    assert p.exitcode == -signal.SIGKILL, p.exitcode
    assert repo.lookup_branch("main") == snaps[-1]
    assert visible(repo.readonly_session(branch="main")) == [0, 1, 2, 3]
    say(
        "2 failed writer",
        "an exception before commit and a SIGKILLed process (data and marker "
        "written, no commit) both leave main at the last commit showing blocks [0, 1, 2, 3]; "
        f"their chunk files stay on disk as orphans ({chunk_files(path) - files0} new files) "
        "until garbage_collect",
    )

    # 3. Uncoordinated concurrent writers.
    a = repo.writable_session("main")
    b_ = repo.writable_session("main")
    write_block(a, 4)
    write_block(b_, 5)
    snaps.append(a.commit("block 4 (writer A)"))
    try:
        b_.commit("block 5 (writer B)")
        raise AssertionError("a stale session committed without a rebase")
    except ic.ConflictError as exc:
        say(
            "3 stale commit",
            f"writer B's commit raises ConflictError (expected parent "
            f"{exc.expected_parent}, actual {exc.actual_parent}) although the chunks are disjoint",
        )
    b_.rebase(ic.ConflictDetector())
    snaps.append(b_.commit("block 5 (writer B, rebased)"))
    assert visible(repo.readonly_session(branch="main")) == [0, 1, 2, 3, 4, 5]
    say(
        "3 rebase",
        "B.rebase(ConflictDetector()) then B.commit() succeeds: disjoint chunks "
        "(blocks and their one-chunk markers) never conflict",
    )
    a = repo.writable_session("main")
    b_ = repo.writable_session("main")
    write_block(a, 6)
    write_block(b_, 7)
    a.commit("block 6 (A)")
    b_.commit("block 7 (B)", rebase_with=ic.ConflictDetector())
    assert visible(repo.readonly_session(branch="main")) == list(range(8))
    say(
        "3 one call",
        "commit(..., rebase_with=ConflictDetector()) rebases and retries by itself "
        "(rebase_tries=1000 by default)",
    )
    a = repo.writable_session("main")
    b_ = repo.writable_session("main")
    write_block(a, 0, np.full((C, T, L, D), 100.0, np.float32))
    write_block(b_, 0, np.full((C, T, L, D), 200.0, np.float32))
    a.commit("rewrite block 0 (A)")
    try:
        b_.commit("rewrite block 0 (B)", rebase_with=ic.ConflictDetector())
        raise AssertionError("a double chunk update was rebased silently")
    except ic.RebaseFailedError as exc:
        kinds = sorted({(repr(c.conflict_type), c.path) for c in exc.conflicts})
        say("3 same chunk", f"both rewriting block 0: RebaseFailedError with {kinds}")
    b_.rebase(ic.BasicConflictSolver(on_chunk_conflict=ic.VersionSelection.UseOurs))
    b_.commit("rewrite block 0 (B wins)")
    value = open_arrays(repo.readonly_session(branch="main"))[0][0, 0, 0, 0]
    assert value == 200.0
    say("3 solver", "BasicConflictSolver(on_chunk_conflict=UseOurs) resolves it: B's block wins")

    # 4. Cooperative writers: fork, write in workers, merge, one commit.
    repo2 = ic.Repository.create(ic.local_filesystem_storage(str(work / "repo2")))
    s = repo2.writable_session("main")
    g = zarr.open_group(s.store, mode="w", zarr_format=3)
    g.create_array(
        "hidden",
        shape=(BLOCKS * C, T, L, D),
        chunks=(C, T, L, D),
        dtype="f4",
        compressors=None,
        fill_value=np.nan,
    )
    g.create_array("block_complete", shape=(BLOCKS,), chunks=(1,), dtype="u1", fill_value=0)
    try:
        s.fork()
        raise AssertionError("forked a session with uncommitted changes")
    except ValueError:
        pass
    s.commit("create arrays")
    coordinator = repo2.writable_session("main")
    try:
        pickle.dumps(coordinator)
        raise AssertionError("pickled a writable session")
    except ValueError:
        pass
    forks = [pickle.dumps(coordinator.fork()) for _ in range(BLOCKS)]
    with ctx.Pool(2) as pool:
        returned = pool.starmap(fork_worker, [(f, b) for b, f in enumerate(forks)])
    coordinator.merge(*[pickle.loads(r) for r in returned])
    coordinator.commit("all blocks, written by 2 worker processes")
    assert visible(repo2.readonly_session(branch="main")) == list(range(BLOCKS))
    assert [i.message for i in repo2.ancestry(branch="main")][0].startswith("all blocks")
    say(
        "4 fork/merge",
        f"{BLOCKS} ForkSessions pickled to 2 processes, merged back, one commit; "
        "forking needs a session without uncommitted changes (so the arrays are committed "
        "first), and a writable Session refuses to pickle",
    )

    # 5. Rewrites and garbage.
    before = chunk_files(path)
    old = repo.lookup_branch("main")
    s = repo.writable_session("main")
    write_block(s, 1, np.full((C, T, L, D), -1.0, np.float32))
    s.commit("rewrite block 1")
    assert open_arrays(repo.readonly_session(snapshot_id=old))[0][C, 0, 0, 0] == 2.0
    grown = chunk_files(path) - before
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    expired = repo.expire_snapshots(older_than=future)
    gc = repo.garbage_collect(future)
    after = chunk_files(path)
    assert open_arrays(repo.readonly_session(branch="main"))[0][C, 0, 0, 0] == -1.0
    say(
        "5 rewrite",
        f"rewriting a block adds {grown} chunk file (old snapshot still reads the "
        f"old block); expire_snapshots + garbage_collect expired {len(expired)} snapshots and "
        f"deleted {gc.chunks_deleted} chunk files ({before + grown} -> {after} files)",
    )

    # 6. posctx's schema through xarray.
    import xarray as xr

    from posctx.store import build_dataset
    from posctx.types import HIDDEN

    n = 3 * C
    ds, encoding = build_dataset(
        token_ids=np.arange(n * T, dtype=np.int32).reshape(n, T),
        topic=np.array(["a", "b", "c"] * C, dtype=object),
        source=np.array(["doc"] * n, dtype=object),
        offset=np.arange(n, dtype=np.int64),
        layers=(0, 1),
        layer_names=("embeddings", "block_1"),
        hidden_size=D,
        storage_dtype="float32",
        chunk_contexts=C,
        chunk_layers=0,
        provenance={},
        attrs={"title": "icechunk check"},
    )
    repo3 = ic.Repository.create(ic.local_filesystem_storage(str(work / "repo3")))
    s = repo3.writable_session("main")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.to_zarr(
            s.store, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding
        )
    s.commit("create store")
    s = repo3.writable_session("main")
    part = xr.Dataset({HIDDEN: (ds[HIDDEN].dims, np.ones((C, T, 2, D), np.float32))})
    part.to_zarr(s.store, region={"context": slice(C, 2 * C)}, consolidated=False)
    s.commit("block 1")
    back = xr.open_zarr(repo3.readonly_session(branch="main").store, consolidated=False)
    assert float(back[HIDDEN].isel(context=C).max()) == 1.0
    assert bool(np.isnan(back[HIDDEN].isel(context=0)).all())
    assert back.topic.values.tolist() == ds.topic.values.tolist()
    notes = sorted({str(w.message)[:80] for w in caught})
    say(
        "6 xarray",
        "build_dataset -> to_zarr(session.store, compute=False, consolidated=False) "
        "-> commit; a block via to_zarr(region=...) -> commit; xr.open_zarr(readonly.store) "
        f"reads labels and data back (warnings while creating: {notes or 'none'})",
    )
    try:
        xr.open_zarr(repo3.readonly_session(branch="main").store, consolidated=True)
        say("6 consolidated", "consolidated=True also opens")
    except Exception as exc:  # noqa: BLE001
        say("6 consolidated", f"consolidated=True fails: {type(exc).__name__}: {str(exc)[:100]}")
    print("all checks passed")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
