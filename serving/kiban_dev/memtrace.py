"""Run `kiban` with its memory traced, for the operator scale benchmark (not part of the operator).

    python -m kiban_dev.memtrace DIR run --all-namespaces ...

Starts tracemalloc (KIBAN_MEMTRACE_FRAMES frames per allocation, default 1: sites by file:line),
then runs the `kiban` command line with the remaining arguments. Each SIGUSR1 writes, into DIR,
`snap-<n>.pickle` (the tracemalloc snapshot, after a full collection) and `stats-<n>.json`: RSS
and its split (/proc/self/smaps_rollup, status), glibc's malloc counters (mallinfo2: bytes in
use, free inside the heap, mmapped) and arena count (malloc_info), the bytes tracemalloc traces,
and the most numerous live object types. `operator_bench --memtrace DIR` sends the signal after
every round. Compare two snapshots with `python -m kiban_dev.memtrace --diff A B`.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import re
import signal
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_figures() -> dict:
    """glibc's view: heap bytes in use and free (fragmentation), mmapped bytes, and arenas."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        info = libc.mallinfo2()
        out = {"heap_bytes": info.arena, "in_use_bytes": info.uordblks, "free_in_heap_bytes": info.fordblks,
               "mmapped_bytes": info.hblkhd}
        libc.fopen.restype = ctypes.c_void_p
        with tempfile.NamedTemporaryFile(suffix=".xml") as handle:
            stream = libc.fopen(handle.name.encode(), b"w")
            libc.malloc_info(0, ctypes.c_void_p(stream))
            libc.fclose(ctypes.c_void_p(stream))
            xml = Path(handle.name).read_text()
        out["arenas"] = len(re.findall(r"<heap nr=", xml))
        return out
    except (OSError, AttributeError) as exc:
        return {"error": str(exc)}


def proc_figures() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads")):
            key, value = line.split(":", 1)
            out[key] = value.strip()
    return out


def stats() -> dict:
    gc.collect()
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    traced, peak = tracemalloc.get_traced_memory()
    return {"proc": proc_figures(), "malloc": malloc_figures(), "traced_bytes": traced, "traced_peak_bytes": peak,
            "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
            "threads": threading.active_count(), "types": counts.most_common(40)}


def install(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    taken = [0]

    def dump(*_: object) -> None:
        taken[0] += 1
        figures = stats()
        (directory / f"stats-{taken[0]}.json").write_text(json.dumps(figures, indent=1) + "\n")
        partial = directory / f"snap-{taken[0]}.partial"
        tracemalloc.take_snapshot().dump(str(partial))
        os.replace(partial, directory / f"snap-{taken[0]}.pickle")  # whole, or not there yet

    signal.signal(signal.SIGUSR1, dump)


def diff(old: str, new: str, top: int = 40, key: str = "lineno") -> None:
    a, b = tracemalloc.Snapshot.load(old), tracemalloc.Snapshot.load(new)
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    a, b = a.filter_traces(filters), b.filter_traces(filters)
    rows = b.compare_to(a, key)
    print(f"total: {sum(s.size for s in b.statistics('filename')) / 2**20:.1f} MiB traced "
          f"(was {sum(s.size for s in a.statistics('filename')) / 2**20:.1f})")
    for stat in rows[:top]:
        frame = stat.traceback[0]
        print(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:8d} blocks  {frame.filename}:{frame.lineno}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--diff":
        diff(sys.argv[2], sys.argv[3], key=sys.argv[4] if len(sys.argv) > 4 else "lineno")
        return 0
    directory, args = Path(sys.argv[1]), sys.argv[2:]
    tracemalloc.start(int(os.environ.get("KIBAN_MEMTRACE_FRAMES", "1")))
    install(directory)
    from kiban.cli import main as kiban_main

    return kiban_main(args)


if __name__ == "__main__":
    sys.exit(main())
