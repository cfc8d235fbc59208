"""Serving PRN from NVIDIA Triton Inference Server: many cameras, one inference server.

PRN Edge builds no server of its own; it makes Triton serve an exported model folder:

* :mod:`prn_edge.serve.repository` (``prn-serve repo``) writes a standard Triton model repository
  for NVIDIA's NGC container: the ONNX model for the onnxruntime backend and, where the folder
  has one, the TensorRT engine for the tensorrt backend (with the plugin library beside it),
  each with a ``config.pbtxt`` taken from the model itself (dynamic batch, dynamic batching,
  instance groups, warm-up, the threshold and metadata as parameters).
* :mod:`prn_edge.serve.triton` (``prn-serve``) serves a model folder here, with the runtime's own
  engine (:func:`~prn_edge.runtime.loader.load_engine`) behind the ``tritonserver`` that PyTriton
  ships (``nvidia-pytriton``), which needs the distribution's Python (see :func:`stub_python_problem`).

The work is in :mod:`prn_edge.serve.api`; :mod:`prn_edge.serve.cli` only parses arguments.
"""
