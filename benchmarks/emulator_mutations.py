"""Do the emulated kernel tests catch real kernel bugs? Plant one bug at a time and see.

Each mutation is a one-line change to a copy of ``kernels/`` (the repository is not touched):
a wrong tie-break, a skipped slice, a dropped element, a missing barrier, an unzeroed tail... For
each, ``tests/test_kernels_emulated.py`` runs against the mutated copy (``$PRN_EDGE_KERNELS_DIR``)
and must fail; a mutation it survives is a hole in the tests (or a change within tolerance, which
the table says). Results: ``benchmarks/results/emulator_mutations.md``.

    python benchmarks/emulator_mutations.py            # about 10 minutes on 2 cores
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prn_edge.io import write_text_atomic
from prn_edge.kernels import kernels_dir
from prn_edge.provenance import provenance, provenance_line

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "emulator_mutations.md"

# (file, original, mutated, what it breaks)
MUTATIONS = [
    ("proto_residual.cu", "return a < b || (a == b && ka < kb);", "return a < b || (a == b && ka > kb);",
     "argmin ties go to the higher index"),
    ("proto_residual.cu", "for (int s = 0; s < slices; ++s) dot +=", "for (int s = 1; s < slices; ++s) dot +=",
     "argmin skips the first d-slice"),
    ("proto_residual.cu", "const int nk = min(KT, K - k0);", "const int nk = min(KT, K - k0 - 1);",
     "dot kernel drops the last prototype of each k-group"),
    ("proto_residual.cu", "            __syncthreads();\n        }\n        if (dsub == 0",
     "        }\n        if (dsub == 0", "second barrier of the d-span sum removed (shared-memory race)"),
    ("proto_residual.cu", "const bool upper = (lane & (N / 2)) != 0;", "const bool upper = (lane & N) != 0;",
     "warp reduce-scatter pairs the wrong lanes"),
    ("proto_residual.cu", "            const long long d = base + i * kThreads + threadIdx.x;\n            if (d < D) {",
     "            const long long d = base + i * kThreads + threadIdx.x;\n            if (d + 1 < D) {",
     "scalar residual path skips the last element"),
    ("proto_residual.cu", "const float diff = round_to<T>(f[i] - p[i]);", "const float diff = f[i] - p[i];",
     "FP16 difference not rounded to storage before abs() or square"),
    ("multi_size_attention.cu", "        stage_zero_tail<N>(Ks, ev);\n", "",
     "score stage: K's ragged tail not zeroed"),
    ("multi_size_attention.cu", "                    acc[r][cc] = s;\n                }\n        }\n        __syncthreads();",
     "                    acc[r][cc] = s;\n                }\n        }",
     "score stage: barrier before the next stage's loads removed (shared-memory race)"),
    ("multi_size_attention.cu", "*end = min(units, *begin + per);", "*end = min(units, *begin + per - 1);",
     "d-splits drop one unit each"),
    ("multi_size_attention.cu", "        v0 = s / d;", "        v0 = s / (d + 1.0f);",
     "softmax scale 1/(d+1) instead of 1/d"),
    ("multi_size_attention.cu", "            for (int j = 0; j < N; ++j) {", "            for (int j = 0; j < N - 1; ++j) {",
     "weights @ V skips the last token"),
    ("multi_size_attention.cu", "if (round_half) { w0", "if (false) { w0",
     "FP16 softmax weights not rounded like the reference's .to(v.dtype)"),
    ("prn_plan.h", "p.slices = static_cast<int>(ceil_div(D, p.chunk));",
     "p.slices = static_cast<int>(ceil_div(D, p.chunk)) - (D > p.chunk ? 1 : 0);",
     "C++ plan (plugins only): one d-slice too few"),
    ("multi_size_attention.cu", "const int vec = m.vec > 1 ? 1 : 0;", "const int vec = 1;",
     "plugin launcher: vector staging even when W % 4 != 0"),
]


EXPECTED_SURVIVORS = (
    "Expected survivor: leaving the FP16 softmax weights unrounded changes them by at most one FP16 "
    "ulp and makes the kernel closer to float64, so it passes the FP16 bound (2e-3, and at most twice "
    "the FP16 reference's own error against float64); rounding them is there to match the reference's "
    "distribution, which a tolerance cannot tell apart.")


def run(mutation, workdir: Path) -> tuple[str, float, str]:
    name, original, mutated, _ = mutation
    copy = workdir / "kernels"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(kernels_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = (copy / name).read_text()
    if source.count(original) != 1:
        return "not applied", 0.0, f"the original text occurs {source.count(original)} times"
    (copy / name).write_text(source.replace(original, mutated))
    env = dict(os.environ, PRN_EDGE_KERNELS_DIR=str(copy), PRN_EDGE_CACHE=str(workdir / "cache"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           "tests/test_kernels_emulated.py"], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    if proc.returncode == 0:
        return "SURVIVED", seconds, ""
    if proc.returncode < 0:  # e.g. SIGSEGV from a misaligned vector load: a GPU faults there too
        return "caught", seconds, f"the test process died of signal {-proc.returncode}"
    return "caught", seconds, failed[0][:160] if failed else proc.stdout.strip().splitlines()[-1][:160]


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mutation in MUTATIONS:
            verdict, seconds, detail = run(mutation, Path(tmp))
            print(f"{verdict:12s} {seconds:6.1f}s  {mutation[0]}: {mutation[3]}  {detail}", flush=True)
            rows.append((mutation, verdict, seconds, detail))
    lines = ["# Planted kernel bugs vs the emulated kernel tests", "",
             "`python benchmarks/emulator_mutations.py`: each row is one one-line bug planted in a copy of",
             "`kernels/`, then `pytest -x tests/test_kernels_emulated.py` (CPU emulator) run against it.", "",
             "| file | planted bug | result | first failing test |", "|---|---|---|---|"]
    for (name, _, _, what), verdict, seconds, detail in rows:
        lines.append(f"| `{name}` | {what} | {verdict} ({seconds:.0f} s) | {detail.replace('|', '/')} |")
    caught = sum(v == "caught" for _, v, _, _ in rows)
    lines += ["", f"{caught} of {len(rows)} caught.", "", EXPECTED_SURVIVORS, "", provenance_line(provenance())]
    write_text_atomic(RESULTS, "\n".join(lines) + "\n")
    print(f"{caught} of {len(rows)} caught -> {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
