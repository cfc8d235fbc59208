"""The export pipeline (installed as ``prn_edge.export``): checkpoint -> ONNX -> TensorRT.

Lives in the repository's top-level ``export/`` folder (the design card's layout) and is
mapped into the single import root by ``setup.py``'s ``package_dir``.
"""
