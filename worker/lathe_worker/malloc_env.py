"""glibc malloc settings for a process that allocates and frees big tensors all the time.

PyTorch's CPU allocator is plain `malloc`. With glibc's defaults every block above the dynamic mmap
threshold (at most 32 MiB, e.g. one [256, 32000] float32 logits chunk) is a fresh `mmap` that is
page-faulted in 4 KiB at a time and unmapped again on free, and the heap is trimmed whenever its free
top grows past the trim threshold, so the next step faults the same memory in again. On a VM those
faults add up to a large part of a training step (`bench/RESULTS.md`, "Allocator").

Setting the thresholds high keeps freed blocks in the heap for reuse, and `glibc.malloc.hugetlb=1` has
malloc ask for transparent huge pages (madvise), so what still has to be faulted in comes in 2 MiB pages.
These are read by glibc at process start only, hence `reexec_with_malloc_tuning`: call it before
anything big is allocated (before importing torch); it replaces the process (same pid, argv, fds) once.
Settings the user already made are kept; other C libraries ignore them.
"""

from __future__ import annotations

import os
import platform
import sys

MARKER = "LATHE_MALLOC_TUNED"
SETTINGS = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),  # blocks up to 1 GiB come from the (reused) heap
    "MALLOC_TRIM_THRESHOLD_": str(2 << 30),  # keep up to 2 GiB of free heap top instead of returning it
}
TUNABLES = ("glibc.malloc.hugetlb=1",)


def tuned_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` plus the malloc settings it does not already make, plus the marker."""
    out = dict(env)
    for key, value in SETTINGS.items():
        out.setdefault(key, value)
    tunables = [t for t in out.get("GLIBC_TUNABLES", "").split(":") if t]
    names = {t.split("=", 1)[0] for t in tunables}
    tunables += [t for t in TUNABLES if t.split("=", 1)[0] not in names]
    out["GLIBC_TUNABLES"] = ":".join(tunables)
    out[MARKER] = "1"
    return out


def reexec_with_malloc_tuning() -> None:
    """Re-execute this very command line once with `tuned_environment` (glibc Linux only; no-op when
    already done, when `LATHE_MALLOC_TUNED` is set, e.g. to 0 to opt out, or when re-executing is not
    possible)."""
    if os.environ.get(MARKER) is not None or not sys.platform.startswith("linux"):
        return
    if platform.libc_ver()[0] != "glibc":
        return
    argv = list(getattr(sys, "orig_argv", []))
    if not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], tuned_environment(dict(os.environ)))
    except OSError:
        return  # keep running untuned rather than fail
