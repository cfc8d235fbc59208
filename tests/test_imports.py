"""The edge runtime must import where torch (and onnx, tensorrt, cupy) are not installed."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"torch", "onnx", "onnxruntime", "tensorrt", "cupy", "kornia", "sklearn", "matplotlib"}
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None
    sys.meta_path.insert(0, Blocker())
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_prn_edge_and_runtime_import_without_torch():
    proc = run_blocked("""
        import numpy as np
        import prn_edge, prn_edge.runtime, prn_edge.config, prn_edge.errors, prn_edge.io, prn_edge.cli
        frame = np.zeros((120, 160, 3), np.uint8)
        assert prn_edge.runtime.prepare_frame(frame, 256).shape == (256, 256, 3)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not heavy, heavy
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_missing_torch_is_a_one_line_install_hint():
    proc = run_blocked("""
        from prn_edge.errors import PRNError, require
        try:
            require("torch", "training")
        except PRNError as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "torch is not installed (needed for training)" in proc.stdout
    assert "pip install" in proc.stdout


def test_every_runtime_module_and_prn_inspect_help_import_without_torch():
    proc = run_blocked("""
        import contextlib, io, numpy as np
        import prn_edge.runtime as rt
        import prn_edge.runtime.cli, prn_edge.runtime.loader, prn_edge.runtime.loop
        import prn_edge.runtime.pipeline, prn_edge.runtime.postprocess, prn_edge.runtime.sources
        import prn_edge.runtime.store, prn_edge.runtime.view, prn_edge.contract, prn_edge.imaging
        import prn_edge.runtime.backends.onnxruntime, prn_edge.runtime.backends.tensorrt
        import prn_edge.runtime.backends.torch, prn_edge.runtime.backends.cupy_fused
        import prn_edge.runtime.backends.tensorrt_support
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            prn_edge.runtime.cli.main(["--help"])
        assert "--source SRC" in buf.getvalue()
        # A loop with a numpy engine runs without any of the blocked packages.
        class E(rt.Engine):
            name, image_size, threshold, metadata = "np", 32, 0.5, {}
            def _predict(self, x):
                return np.zeros((len(x), 32, 32), np.float32), np.zeros(len(x), np.float32)
        s = rt.InspectionLoop(rt.Pipeline(E()), rt.SyntheticSource(count=5)).run()
        assert s.frames == 5
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not heavy, heavy
        import tempfile, pathlib
        folder = pathlib.Path(tempfile.mkdtemp())
        (folder / "model.onnx").write_bytes(b"")
        try:
            rt.load_engine(folder)
        except prn_edge.errors.PRNError as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "no engine can run" in proc.stdout
    assert "onnxruntime-cpu: onnxruntime is not installed (pip install onnxruntime)" in proc.stdout
