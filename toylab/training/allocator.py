"""Keep freed memory for reuse: fewer page faults in a training loop (glibc only).

A training step allocates and frees the same tensors every step (activations,
gradients, attention patterns: 0.1 to 2 MB each for the presets). glibc's
``malloc`` hands blocks of that size to the kernel and back, or trims the top of
its heap when they are freed, so every step maps fresh pages and faults them in
again: 260 to 960 minor page faults per ``induction-2l`` step on the machine this
was measured on, and steps 6 % slower than without them (processes alternated on
an idle machine) to 10 % (both cores busy, as in ``make models --jobs 2`` or the
test suite). :func:`reuse_freed_memory` tells ``malloc`` to
serve blocks up to :data:`MMAP_THRESHOLD` bytes from its heap and to keep up to
:data:`TRIM_THRESHOLD` bytes of free heap instead of returning it, after which a
step faults almost no pages.

It is a setting of the whole process (``mallopt``) and is never undone: freed
memory up to those sizes stays with the process until it exits. It changes no
number any computation returns (torch aligns every buffer to 64 bytes either way;
every preset retrained with and without it came out bit-identical).
Elsewhere than glibc (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD = 8 << 20  # bytes: blocks up to this size come from the heap, not a fresh mapping
TRIM_THRESHOLD = 32 << 20  # bytes of free memory at the heap's top that malloc keeps instead of returning
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def _glibc():
    """glibc, loaded; None where the C library is another one (or none can be loaded)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)  # name None (no library found by name): the process's own symbols
    except (OSError, TypeError):  # TypeError: CDLL(None) on Windows
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@functools.cache  # once per process
def reuse_freed_memory() -> bool:
    """Set glibc ``malloc`` to keep freed blocks for reuse (see the module's text), once
    per process. Returns True where the settings are in force, False where this is not
    glibc or ``mallopt`` refused them (nothing is changed then)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # mallopt returns 1 on success. Either setting alone is worse than none (measured:
    # a fixed trim threshold alone sends every block over 128 kB to a fresh mapping), so
    # the one that can be refused (over 512 kB on a 32-bit build) goes first; the trim
    # threshold, which glibc always takes, follows only if it was accepted.
    return (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
