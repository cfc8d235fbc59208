"""The runtime's GPU check: the CuPy-fused engine against the PyTorch reference, and its loop speed.

Run on a machine with a CUDA GPU, CuPy and a CUDA build of torch (no data set, no TensorRT
needed), from the repository root::

    PYTHONPATH=. python benchmarks/runtime_gpu_check.py [--out results.json]

1. A seeded edge-config PRN (random-weight Lite0 encoder, prototypes from synthetic "normal"
   images, random head scaled so that the map is not flat) saved as ``checkpoint.pt``.
2. ``load_engine(folder)`` must pick ``cupy-fused`` (the folder holds only the checkpoint).
3. Parity on 8 frames: CupyFusedEngine vs TorchEngine on the same GPU (same convolutions, so
   only the two fused ops differ) and vs the CPU reference; decisions must agree.
4. Timing: predict at batch 1 and 8 (median of 30 after warm-up, H2D and D2H included).
5. The inspection loop with the fused engine: 300 frames from a file-like source (FPS, latency
   percentiles), then a 500 FPS camera-like source (drops, bounded frame age).

Prints a JSON summary (and writes it with ``--out``); exits 1 when a parity check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

GAIN = 1.5   # head weight scale: the map spans ~(0.17, 0.72) rather than sitting at one value


def synthetic_images(n: int, seed: int, defect: bool = False) -> np.ndarray:
    """Smooth shaded textures (uint8 (n, 256, 256, 3) RGB); ``defect`` adds a bright blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    out = []
    for _ in range(n):
        base = 0.5 + 0.2 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(5 * yy + rng.uniform(0, 6))
        img = np.clip(base[..., None] + 0.05 * rng.standard_normal((256, 256, 3)), 0, 1)
        if defect:
            cy, cx = rng.integers(40, 216, 2)
            img[(yy * 255 - cy) ** 2 + (xx * 255 - cx) ** 2 < 15 ** 2] = [1.0, 0.9, 0.2]
        out.append((img * 255).astype(np.uint8))
    return np.stack(out)


def build_checkpoint(folder: Path) -> Path:
    import torch

    from prn_edge.checkpoint import save_checkpoint
    from prn_edge.config import get_config
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone
    from prn_edge.model.deployable import to_unit_float
    from prn_edge.model.random_head import randomize_head

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone("efficientnet_lite0", weights="random")
    model = PRN(get_config("edge"), backbone=backbone).eval()
    normal = to_unit_float(torch.from_numpy(synthetic_images(8, 1)), channels_last=True)
    with torch.no_grad():
        model.build_prototypes([normal], k=4)
    randomize_head(model, seed=1, gain=GAIN)            # as in tests/test_export_onnx.py
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate([synthetic_images(4, 2), synthetic_images(4, 3, True)]))
        scores = model(to_unit_float(x, channels_last=True)).score
    # Threshold in the widest gap between the middle scores, so that both decisions occur and a
    # last-digit difference between backends cannot flip one.
    ordered = np.sort(scores.numpy())
    i = int(np.argmax(np.diff(ordered[2:6]))) + 2
    path = folder / "checkpoint.pt"
    save_checkpoint(path, model, threshold=float((ordered[i] + ordered[i + 1]) / 2))
    return path


def timed(engine, images: np.ndarray, n: int = 30) -> float:
    for _ in range(5):
        engine.predict(images)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        engine.predict(images)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    import torch

    from prn_edge.kernels import fused_available
    from prn_edge.runtime import (
        InspectionLoop,
        Pipeline,
        SQLiteStore,
        SyntheticSource,
        load_engine,
    )
    from prn_edge.runtime.backends.cupy_fused import CupyFusedEngine
    from prn_edge.runtime.backends.torch import TorchEngine

    result: dict = {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "fused_available": fused_available()}
    print(json.dumps(result), flush=True)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = build_checkpoint(folder)
        auto = load_engine(folder)
        result["auto_choice"] = auto.name
        ok &= auto.name.startswith("cupy-fused")
        auto.close()

        frames = np.concatenate([synthetic_images(4, 2), synthetic_images(4, 3, True)])
        # The FP32 reference must really be FP32: cuDNN convolutions default to TF32 on Ampere and
        # later, whose ~1e-3 relative error would hide what the fused ops change.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        cpu = TorchEngine(ckpt, device="cpu")
        ref = TorchEngine(ckpt, device="cuda")
        fused = CupyFusedEngine(ckpt, device="cuda")
        m_cpu, s_cpu = cpu.predict(frames)
        m_ref, s_ref = ref.predict(frames)
        m_fused, s_fused = fused.predict(frames)
        thr = fused.threshold
        parity = {
            "fused_vs_torch_cuda_max_map_diff": float(np.abs(m_fused - m_ref).max()),
            "fused_vs_torch_cuda_max_score_diff": float(np.abs(s_fused - s_ref).max()),
            "fused_vs_cpu_max_map_diff": float(np.abs(m_fused - m_cpu).max()),
            "fused_vs_cpu_max_score_diff": float(np.abs(s_fused - s_cpu).max()),
            "map_std": float(m_cpu.std()),
            "decisions_equal": bool(((s_fused > thr) == (s_cpu > thr)).all()),
            "scores_cpu": [round(float(v), 6) for v in s_cpu],
            "threshold": thr,
        }
        # For information: with TF32 convolutions (torch's default), as the engines run by default.
        torch.backends.cudnn.allow_tf32 = True
        m_ref32, _ = ref.predict(frames)
        m_fused32, s_fused32 = fused.predict(frames)
        parity["tf32_fused_vs_torch_cuda_max_map_diff"] = float(np.abs(m_fused32 - m_ref32).max())
        parity["tf32_torch_cuda_vs_cpu_max_map_diff"] = float(np.abs(m_ref32 - m_cpu).max())
        parity["tf32_fused_vs_cpu_max_score_diff"] = float(np.abs(s_fused32 - s_cpu).max())
        result["parity"] = parity
        # In FP32 only the fused ops differ from the same-GPU reference: sums in another order.
        ok &= parity["fused_vs_torch_cuda_max_map_diff"] <= 1e-4 and parity["fused_vs_torch_cuda_max_score_diff"] <= 1e-5
        ok &= parity["decisions_equal"]
        print(json.dumps(parity), flush=True)

        result["predict_ms"] = {f"{e.name}@b{b}": timed(e, frames[:b]) for e in (ref, fused) for b in (1, 8)}
        print(json.dumps(result["predict_ms"]), flush=True)

        frames_bgr = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        loop = InspectionLoop(Pipeline(fused), SyntheticSource(frames_bgr, count=300), SQLiteStore(folder / "a.db"))
        s = loop.run()
        result["loop_file"] = {"frames": s.frames, "fps": s.fps, "latency_ms": s.latency_ms}
        ages = []
        loop = InspectionLoop(Pipeline(fused), SyntheticSource(frames_bgr, fps=500), SQLiteStore(folder / "b.db"),
                              max_frames=300, on_result=lambda f, d, lat: ages.append(lat["total"]))
        s = loop.run()
        result["loop_camera_500fps"] = {"frames": s.frames, "drops": s.drops, "fps": s.fps,
                                        "age_ms_p50": float(np.median(ages)), "age_ms_max": float(max(ages[5:])),
                                        "infer_ms_p50": s.latency_ms["infer"]["p50"]}
        print(json.dumps(result["loop_file"]), json.dumps(result["loop_camera_500fps"]), flush=True)
    from prn_edge.provenance import provenance

    result["ok"] = bool(ok)
    result["provenance"] = provenance()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
