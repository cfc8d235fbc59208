"""``prn-bench``: every backend of an exported model timed per stage, interleaved (see :mod:`.harness`).

numpy only at import; torch, ONNX Runtime and matplotlib are imported where used.
"""
