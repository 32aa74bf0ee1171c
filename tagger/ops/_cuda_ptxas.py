"""Compile every CUDA kernel to PTX (no GPU needed) and summarise `ptxas -v`.

    python -m tagger.ops._cuda_ptxas [--arch sm_90]      # prints the markdown table in docs/cuda.md

Uses the launch constants of tagger/ops/cuda.py (TILE, REDUCE_THREADS) and numba-cuda's
NVVM (``cuda.compile_ptx``); ptxas comes from the CUDA toolkit (PATH or /usr/local/cuda).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np


def find_ptxas():
    found = shutil.which("ptxas")
    if found:
        return found
    for root in ("/usr/local/cuda/bin", *sorted(
            (os.path.join("/usr/local", d, "bin") for d in os.listdir("/usr/local") if d.startswith("cuda")),
            reverse=True)):
        path = os.path.join(root, "ptxas")
        if os.path.exists(path):
            return path
    return None


def compile_kernel(name, dtype, cc=(9, 0)):
    """PTX text of kernel `name` for `dtype`, built with tagger.ops.cuda's constants."""
    from numba import cuda as nbcuda

    from tagger.ops import _cuda_kernels as K
    from tagger.ops import cuda as C

    spec = K.KERNELS[name]
    ptx, _ = nbcuda.compile_ptx(spec.build(np.dtype(dtype).type, C.TILE, C.REDUCE_THREADS),
                                spec.signature(dtype), cc=cc)
    return ptx


def all_variants():
    from tagger.ops import _cuda_kernels as K

    return [(name, np.dtype(dt).name) for name, spec in K.KERNELS.items() for dt in spec.dtypes]


_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
_LINK_SMEM = re.compile(r"used \d+ registers.*?(\d+) bytes smem")
_SYSTEM_SMEM = 1024
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _nvjitlink_log(ptx, arch):
    """ptxas -v output via nvJitLink (the assembler shipped with numba-cuda[cu13]'s NVVM,
    so it accepts the PTX version NVVM emits), or None when nvJitLink is unavailable."""
    try:
        from cuda.bindings import nvjitlink as nj
    except ImportError:
        return None
    opts = [f"-arch={arch}", "-verbose"]
    h = nj.create(len(opts), opts)
    try:
        data = ptx.encode()
        nj.add_data(h, nj.InputType.PTX, data, len(data), "kernel.ptx")
        try:
            nj.complete(h)
        except Exception as err:
            n = nj.get_error_log_size(h)
            buf = bytearray(n)
            nj.get_error_log(h, buf)
            raise RuntimeError(f"nvJitLink failed: {err}\n{buf.decode(errors='replace')}") from None
        n = nj.get_info_log_size(h)
        buf = bytearray(n)
        nj.get_info_log(h, buf)
        return buf.decode(errors="replace")
    finally:
        nj.destroy(h)


def _ptxas_log(ptx, arch, ptxas):
    """ptxas -v output from the toolkit binary. NVVM from pip may be newer than the
    installed toolkit (here NVVM 13.4 emits `.version 9.4`, ptxas 13.0 reads up to 9.0);
    the version line is lowered to what this ptxas accepts (the kernels use no newer
    PTX feature; ptxas refuses the file if one does)."""
    ver = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+)\.(\d+)", ver)
    if m:  # CUDA 12.x reads PTX 8.x, 13.x reads 9.x: ISA major = CUDA major - 4
        ptx = re.sub(r"^\.version \d+\.\d+", f".version {int(m.group(1)) - 4}.{m.group(2)}", ptx, count=1,
                     flags=re.M)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        out = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{out.stderr}")
    return out.stderr + out.stdout


def assembler():
    """'nvjitlink', 'ptxas' or None: what ptxas_info will use."""
    try:
        from cuda.bindings import nvjitlink  # noqa: F401

        return "nvjitlink"
    except ImportError:
        return "ptxas" if find_ptxas() else None


def ptxas_info(ptx, arch="sm_90", tool=None):
    """{'registers', 'barriers', 'smem', 'stack', 'spill_stores', 'spill_loads'} from the
    `ptxas -v` report of assembling `ptx` for `arch`."""
    tool = tool or assembler()
    text = _nvjitlink_log(ptx, arch) if tool == "nvjitlink" else _ptxas_log(ptx, arch, find_ptxas())
    used, stack = _USED.search(text), _STACK.search(text)
    if used is None:
        raise RuntimeError(f"no register report in:\n{text}")
    smem = used.group(3)
    if smem is None:
        # nvJitLink's summary line counts the 1 KiB per block the driver reserves on sm_8x/9x
        link = _LINK_SMEM.search(text)
        smem = int(link.group(1)) - _SYSTEM_SMEM if link and int(link.group(1)) >= _SYSTEM_SMEM else 0
    return dict(
        registers=int(used.group(1)),
        barriers=int(used.group(2) or 0),
        smem=int(smem),
        stack=int(stack.group(1)) if stack else 0,
        spill_stores=int(stack.group(2)) if stack else 0,
        spill_loads=int(stack.group(3)) if stack else 0,
    )


def main(argv=None):
    from tagger.ops import cuda as C

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args(argv)
    digits = args.arch.removeprefix("sm_")
    cc = (int(digits[:-1]), int(digits[-1]))
    tools = [t for t in ("ptxas", "nvjitlink") if t == "ptxas" and find_ptxas() or t == "nvjitlink" and assembler() == "nvjitlink"]
    if not tools:
        raise SystemExit("neither the toolkit's ptxas nor nvJitLink is installed")
    print(f"<!-- {args.arch}; TILE={C.TILE}, REDUCE_THREADS={C.REDUCE_THREADS}; "
          f"python -m tagger.ops._cuda_ptxas --arch {args.arch} -->")
    regs = " | ".join(f"registers ({t})" for t in tools)
    print(f"| kernel | dtype | {regs} | spill stores / loads (B) | stack (B) | static shared mem (B) | barriers |")
    print("|---|---|" + "---:|" * (len(tools) + 4))
    for name, dt in all_variants():
        ptx = compile_kernel(name, dt, cc)
        infos = [ptxas_info(ptx, args.arch, t) for t in tools]
        spills = " ; ".join(f"{i['spill_stores']} / {i['spill_loads']}" for i in infos)
        stack = max(i["stack"] for i in infos)
        regs = " | ".join(str(i["registers"]) for i in infos)
        print(f"| {name} | {dt} | {regs} | {spills} | {stack} | {infos[0]['smem']} | {infos[0]['barriers']} |",
              flush=True)


if __name__ == "__main__":
    main()
