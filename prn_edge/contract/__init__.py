"""The contract layer: what every other layer agrees on, in one place (stdlib + numpy only).

* :mod:`.engine`: the :class:`Engine` base class (checked ``predict``, stage timings);
* :mod:`.metadata`: the metadata an exported model carries;
* :mod:`.model_folder`: the exported model folder's layout (:class:`ModelFolder`);
* :mod:`.decision`: the decision rule (:func:`decide`, :func:`resolve_threshold`);
* :mod:`.serving`: the names a model served by Triton goes by (model, tensors, parameters).

It imports nothing of ``prn_edge`` but :mod:`prn_edge.errors`; every other package may import
it (``docs/architecture.md``; enforced by ``tests/test_architecture.py``).
"""
from prn_edge.contract.decision import decide, resolve_threshold
from prn_edge.contract.engine import (
    DEVICE_STAGES,
    Engine,
    EngineUnavailable,
    check_frames,
    check_outputs,
)
from prn_edge.contract.metadata import (
    FORMAT,
    METADATA_KEYS,
    build_metadata,
    format_metadata,
    parse_metadata,
    read_metadata,
)
from prn_edge.contract.model_folder import (
    PRECISIONS,
    ModelFiles,
    ModelFolder,
    find_model_files,
    precision_of,
    recorded_checkpoint,
)

__all__ = ["DEVICE_STAGES", "FORMAT", "METADATA_KEYS", "PRECISIONS", "Engine", "EngineUnavailable", "ModelFiles",
           "ModelFolder", "build_metadata", "check_frames", "check_outputs", "decide", "find_model_files",
           "format_metadata", "parse_metadata", "precision_of", "read_metadata", "recorded_checkpoint",
           "resolve_threshold"]
