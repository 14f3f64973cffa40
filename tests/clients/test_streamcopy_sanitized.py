"""clients/_streamcopy.c built with AddressSanitizer and UndefinedBehaviorSanitizer, its copies run at
every XXH3 length class, every way of calling them, in a child process: a read or write past either
buffer (the tail, the final stripe read back; a prefetch past the end is a hint, not a read) or
undefined behaviour fails the test (an overread of 8 bytes planted in the final stripe did). Skipped
where the compiler has no sanitizer runtime."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "clients" / "_streamcopy.c"

CHILD = textwrap.dedent("""
    import importlib.util, sys
    import numpy as np, xxhash
    spec = importlib.util.spec_from_file_location("_streamcopy", sys.argv[1])
    sc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sc)
    rng = np.random.default_rng(5)
    for n in [*range(0, 1100), 2047, 2048, 2049, 65537, (1 << 20) + 3]:
        src = bytes(rng.integers(0, 256, n, dtype=np.uint8))  # exactly n bytes: an overread is caught
        for fn in (sc.copy_xxh3, sc._copy_xxh3_portable):
            for cut in {0, n // 3, n}:
                for nontemporal in (False, True):
                    dst = bytearray(n)
                    assert fn(dst, src, nontemporal, cut) == xxhash.xxh3_64_intdigest(src), (n, cut)
                    assert dst[:cut] == src[:cut] and not any(dst[cut:]), (n, cut)
        dst = bytearray(n)
        sc.stream_copy(dst, src)
        assert dst == src, n
    print("checked")
""")


def _runtime(cc: str, name: str) -> str | None:
    out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


def test_the_c_copies_stay_inside_their_buffers_under_sanitizers(tmp_path):
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    asan, ubsan = _runtime(cc, "libasan.so"), _runtime(cc, "libubsan.so")
    if asan is None or ubsan is None:
        pytest.skip(f"{cc} has no AddressSanitizer / UndefinedBehaviorSanitizer runtime here")
    so = tmp_path / ("_streamcopy" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run([cc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-fno-omit-frame-pointer", "-fPIC", "-shared", f"-I{sysconfig.get_path('include')}",
                    str(SOURCE), "-o", str(so)], check=True)
    env = dict(os.environ, LD_PRELOAD=f"{asan}:{ubsan}", ASAN_OPTIONS="detect_leaks=0",
               PYTHONMALLOC="malloc")  # every buffer from malloc, where AddressSanitizer watches its edges
    child = subprocess.run([sys.executable, "-c", CHILD, str(so)], env=env, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0 and "checked" in child.stdout, child.stderr[-4000:]
