"""Registers, shared memory and spills of every fused kernel, per target architecture.

Compiles ``kernels/*.cu`` with nvcc (``-cubin -arch=sm_XX -Xptxas -v``) for Jetson Orin (sm_87),
Ada (sm_89) and Hopper (sm_90), and, where libnvrtc is found, through NVRTC exactly as the CuPy
path does, and writes the resource report as a Markdown table (default
``benchmarks/results/kernels.md``). No GPU needed.

Usage: python benchmarks/kernel_resources.py [--out PATH] [--no-nvrtc]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prn_edge.kernels import KERNEL_FILES, _compile, constants, kernels_dir, load_source
from prn_edge.provenance import provenance, provenance_line

# Occupancy on these targets: 64K 32-bit registers and 2048 threads per SM on all three;
# shared memory per SM: 164 KB (sm_87), 100 KB (sm_89), 228 KB (sm_90).
SMEM_PER_SM = {"sm_87": 164 * 1024, "sm_89": 100 * 1024, "sm_90": 228 * 1024}


def blocks_per_sm(registers: int, smem: int, arch: str, threads: int) -> int:
    """Resident 256-thread blocks per SM from registers (allocated per warp in units of 256) and
    static shared memory (+1 KB reserved per block on sm_8x/9x)."""
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = 65536 // (regs_per_warp * (threads // 32))
    by_smem = SMEM_PER_SM[arch] // (smem + 1024) if smem else 32
    by_threads = 2048 // threads
    return max(0, min(by_regs, by_smem, by_threads))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kernels.md")
    parser.add_argument("--no-nvrtc", action="store_true", help="skip the NVRTC compile")
    args = parser.parse_args(argv)
    nvcc = _compile.find_nvcc()
    if nvcc is None:
        print("nvcc not found: install the CUDA toolkit", file=sys.stderr)
        return 2
    banner = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout.splitlines()
    version = next((line.strip() for line in banner if "release" in line), "nvcc")
    threads = constants()["kThreads"]
    rows, spills = [], 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in KERNEL_FILES:
            for arch in _compile.ARCHS:
                _, res = _compile.nvcc_compile(kernels_dir() / name, arch, Path(tmp), nvcc)
                for kernel in KERNEL_FILES[name]:
                    rows.append(("nvcc", name, arch, res[kernel]))
    lib = None if args.no_nvrtc else _compile.find_nvrtc()
    nvrtc_note = "NVRTC: not run (libnvrtc not found)" if lib is None else ""
    if lib is not None:
        major, minor = _compile.nvrtc_version(lib)
        nvrtc_note = f"NVRTC {major}.{minor} (the CuPy path; sources inlined by prn_edge.kernels.load_source)"
        for name in KERNEL_FILES:
            for arch in _compile.ARCHS:
                _, log = _compile.nvrtc_compile(load_source(name), name, arch, lib)
                res = _compile.parse_ptxas(log)
                for kernel in KERNEL_FILES[name]:
                    rows.append(("nvrtc", name, arch, res[kernel]))
    lines = ["# Kernel resources", "",
             f"ptxas' report for every entry point of `kernels/*.cu`, {threads}-thread blocks. "
             f"Compiler: {version}; {nvrtc_note}. Written by `benchmarks/kernel_resources.py` "
             f"({time.perf_counter() - t0:.0f} s on the 2-core CI machine, no GPU).", "",
             "Blocks/SM: resident blocks per SM from registers and static shared memory (the occupancy limit, "
             "not a measurement).", "",
             "| compiler | file | kernel | arch | registers | smem (B) | stack (B) | spill st/ld (B) | blocks/SM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for compiler, name, arch, r in rows:
        spills += r.spill_stores + r.spill_loads
        lines.append(f"| {compiler} | {name} | `{r.kernel}` | {arch} | {r.registers} | {r.smem} | {r.stack} | "
                     f"{r.spill_stores}/{r.spill_loads} | {blocks_per_sm(r.registers, r.smem, arch, threads)} |")
    lines += ["", f"Spills: {'none' if spills == 0 else f'{spills} bytes (see above)'}.", "",
              provenance_line(provenance())]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if spills == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
