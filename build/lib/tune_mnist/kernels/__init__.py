"""tune_mnist's Triton kernels: where they can run, and the one record of what this process has compiled.

conv_pool.py   a CNN population's conv + activation + max-pool blocks
adam.py        Adam for stacked parameters, each member with its own learning rate and weight decay
corrupt.py     the corruption draw (noise.corrupt) in one pass
screen.py      the random search's fp16 screen of untrained TinyCNNs
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs (macOS wheels have no Triton): every caller has a torch path
    triton = tl = None


def available(device: torch.device | str) -> bool:
    """On a GPU; on a CPU only under Triton's interpreter (TRITON_INTERPRET=1), which the tests use."""
    return triton is not None and (torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


# Triton compiles a kernel at its first launch, one after another; compiling ahead, in threads (the compiler lets
# go of the GIL), takes the wait off the trials. What was compiled, by key, so that nothing compiles twice.
_compiled: dict[Hashable, Future] = {}
_lock = threading.Lock()
_threads: ThreadPoolExecutor | None = None


def _claim(key: Hashable) -> tuple[Future, bool]:
    """The key's record, and whether this caller made it (and so must compile)."""
    with _lock:
        first = key not in _compiled
        if first:
            _compiled[key] = Future()
        return _compiled[key], first


def _run(done: Future, compile: Callable[[], None]) -> None:
    try:
        compile()
    except BaseException as e:
        done.set_exception(e)
        raise
    done.set_result(None)


def once(key: Hashable, compile: Callable[[], None]) -> None:
    """Runs compile() the first time key is asked for, in this thread; later callers, in any thread, wait for it."""
    done, first = _claim(key)
    if first:
        _run(done, compile)
    done.result()


def in_background(key: Hashable, compile: Callable[[], None]) -> Future:
    """once(key, compile) in a thread of its own; the key's record exists when this returns."""
    global _threads
    done, first = _claim(key)
    if first:
        with _lock:
            _threads = _threads or ThreadPoolExecutor(16, thread_name_prefix="compile")
        _threads.submit(_run, done, compile)
    return done
