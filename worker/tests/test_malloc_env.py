"""The worker re-executes itself once with glibc malloc tuned (see lathe_worker/malloc_env.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lathe_worker.malloc_env import MARKER, tuned_environment

WORKER_DIR = Path(__file__).resolve().parents[1]


def test_tuned_environment_keeps_what_the_user_set():
    env = tuned_environment({"MALLOC_TRIM_THRESHOLD_": "123", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.x=1"})
    assert env["MALLOC_TRIM_THRESHOLD_"] == "123"
    assert int(env["MALLOC_MMAP_THRESHOLD_"]) >= 128 << 20
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0:glibc.x=1"  # the user's hugetlb choice wins
    assert tuned_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert env[MARKER] == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_reexec_happens_once_and_keeps_argv():
    code = ("import os, sys, json; from lathe_worker.malloc_env import reexec_with_malloc_tuning; "
            "print('start', flush=True); reexec_with_malloc_tuning(); "
            "print(json.dumps([os.environ.get(k) for k in ('LATHE_MALLOC_TUNED', 'MALLOC_MMAP_THRESHOLD_')] + sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k not in (MARKER, "MALLOC_MMAP_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", code, "x", "--y"], cwd=WORKER_DIR, env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[:2] == ["start", "start"]  # ran twice: before and after the re-exec, and no more
    tuned, threshold, *argv = json.loads(out[2])
    assert tuned == "1" and int(threshold) >= 128 << 20 and argv == ["x", "--y"]
    opted_out = subprocess.run([sys.executable, "-c", code], cwd=WORKER_DIR, env={**env, MARKER: "0"},
                               capture_output=True, text=True, check=True).stdout.splitlines()
    assert opted_out[0] == "start" and json.loads(opted_out[1])[:2] == ["0", None]
