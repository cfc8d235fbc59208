"""The backends: one module each, every one an :class:`~prn_edge.contract.engine.Engine`.

* :mod:`.onnxruntime`: exported ONNX files in ONNX Runtime (CPU, CUDA, TensorRT providers);
* :mod:`.tensorrt`: serialized TensorRT engines (+ :mod:`.tensorrt_support`: plugin library, sidecar);
* :mod:`.torch`: the PyTorch PRN, the reference;
* :mod:`.cupy_fused`: the PyTorch PRN with the fused CUDA kernels;
* :mod:`.triton`: a model served by Triton Inference Server (``prn-inspect --server``), reached with
  tritonclient over gRPC or HTTP (:func:`~prn_edge.runtime.loader.connect_server`).

Nothing is imported here: each module imports its own dependency when an engine is built,
and :func:`prn_edge.runtime.loader.load_engine` picks one.
"""
