"""`device: cpu | cuda | auto` -> an ops backend, with a clear word about the choice."""
from __future__ import annotations

import sys

from tagger.errors import TaggerError
from tagger.ops import get_ops

DEVICES = ("cpu", "cuda", "auto")


def cuda_usable() -> tuple[bool, str]:
    """(usable, reason or device name). Never raises: no GPU, no driver, no numba-cuda all say no."""
    try:
        cuda_ops = get_ops("cuda")
    except Exception as err:  # numba-cuda missing or broken
        return False, f"the CUDA backend cannot be imported ({type(err).__name__}: {err}); pip install 'tagger[cuda]'"
    try:
        if not cuda_ops.is_available():
            return False, "no usable CUDA GPU was found"
        if cuda_ops.is_simulator():
            return True, "the numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1), not a GPU"
        return True, cuda_ops.device_name()
    except Exception as err:
        return False, f"CUDA check failed ({type(err).__name__}: {err})"


def resolve_device(device: str = "cpu", announce=False):
    """The ops backend for `device`. 'auto' picks CUDA when a GPU is usable and says which."""
    if not isinstance(device, str):
        return device  # already an ops module
    if device not in DEVICES:
        raise TaggerError(f"unknown device {device!r}; choose cpu, cuda or auto")
    if device == "cpu":
        return get_ops("cpu")
    usable, info = cuda_usable()
    if device == "cuda":
        if not usable:
            raise TaggerError(f"--device cuda: {info}; use --device cpu (or auto)")
        ops = get_ops("cuda")
    else:
        # auto never picks the simulator: it is a test tool, thousands of times slower than the CPU
        usable = usable and not get_ops("cuda").is_simulator()
        ops = get_ops("cuda") if usable else get_ops("cpu")
    if announce:
        print(f"device: {'cuda (' + info + ')' if ops.__name__.endswith('cuda') else 'cpu'}"
              + ("" if usable or device == "cuda" else f" [auto: {info}]"), file=sys.stderr)
    return ops


COMPILE_NOTICE = "compiling Numba kernels (first run only; later runs load them from the cache)..."
_notice = {"said": False, "listening": set()}  # the notice at most once; one listener per event module


def announce_compile(ops=None):
    """Say so, once per process, when a Numba kernel is actually being compiled.

    Numba fires its "numba:compile" event only on a real compilation, never when a
    kernel is loaded from the on-disk cache, so the notice cannot be printed on a warm
    run. (Checking the cache files before the run cannot know which kernels the run will
    use: kernels a run never calls - sigmoid, pooling and SGD for a POS tagger - are never
    cached, so such a check said "compiling" on every command.) numba-cuda has its own
    event module; it is listened to when `ops` is the CUDA backend.
    """
    modules = ["numba.core.event"]
    if ops is not None and getattr(ops, "__name__", "").endswith("cuda"):
        modules.append("numba.cuda.core.event")
    for name in modules:
        if name not in _notice["listening"]:
            _listen(name)


def _listen(module_name: str) -> None:
    import importlib

    try:
        event = importlib.import_module(module_name)
    except ImportError:  # an older numba-cuda shares numba's own event module
        return

    class _Once(event.Listener):
        def on_start(self, ev):
            if not _notice["said"]:
                _notice["said"] = True
                print(COMPILE_NOTICE, file=sys.stderr, flush=True)

        def on_end(self, ev):
            pass

    event.register("numba:compile", _Once())
    _notice["listening"].add(module_name)
