"""release_memory gives freed heap pages back to the OS (what keeps eval's resident memory flat SAE after SAE)."""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from saelens_amort.memory import release_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
blocks = [bytearray(100_000) for _ in range(3000)]  # ~300 MB of heap chunks (below glibc's mmap threshold)
for i, b in enumerate(blocks):
    b[::4096] = b"x" * len(b[::4096])  # touch every page
keep = blocks[-1]  # a live chunk at the top of the heap: free() alone cannot shrink it
del blocks
before = rss()
release_memory()
print(before, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = map(float, out.stdout.split())
    assert before - after > 200, (before, after)  # nearly all of the ~300 MB freed
