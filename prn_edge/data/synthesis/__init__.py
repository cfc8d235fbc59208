"""Online anomaly synthesis for PRN training (docs/model.md, "Anomaly synthesis"), batched torch.

Each training batch of normal images is turned into an exact mix of normal samples,
extended anomalies (EA: a seen defect, augmented, moved and cropped by a target area) and
simulated anomalies (SA: Perlin blobs filled from a DTD texture or from the image itself).
Everything is a batched tensor operation on the device of the input batch (so the paper's
schedule can synthesize on the GPU), and every random choice comes from an explicit
``torch.Generator``: the same seed and inputs give bit-identical batches (on one device).

Conventions: images are float ``(B, 3, H, W)`` RGB in [0, 1]; masks are float {0, 1}
``(B, 1, H, W)``. The mask returned for a synthesized sample is exactly the set of pixels
that the blend altered (``M`` in docs/model.md's formulas): pixels outside it are bit-identical
to the input normal image. Synthesized masks are never empty (an empty one would be a
mislabelled normal): redraws are bounded and end in a deterministic fallback.

Photometric and geometric ops are Kornia's (``kornia.enhance``, ``kornia.geometry``);
only Perlin noise (:mod:`prn_edge.data.perlin`), target-area shapes and grid shuffling are
written here, because Kornia has no equivalent.

Modules, one role each:

* :mod:`.config`: :class:`SynthesisConfig`, :func:`batch_composition`,
  :class:`SynthesizedBatch` and the fixed constants (op lists, shape ranges, kinds).
* :mod:`.sampling`: the generator-driven random draws every other module uses.
* :mod:`.masks`: target areas (circle, rectangle, polygon inside the foreground).
* :mod:`.augment`: the photometric ops (EA Aug1, SA colour ops), the affine warp (Aug2)
  and the HOA grid shuffle.
* :mod:`.synthesizer`: :class:`AnomalySynthesizer`, which composes them into batches.
* :mod:`.textures`: :func:`load_textures` (DTD images at the training size).
* :mod:`.preview`: :func:`preview_grid` (``prn-train --preview``).
"""
from __future__ import annotations

from prn_edge.data.synthesis.augment import _grid_shuffle
from prn_edge.data.synthesis.config import (
    CIRCLE_RADIUS,
    COLOUR_OPS,
    COLOUR_OPS_PER_SAMPLE,
    EA_OPS,
    EA_OPS_PER_SAMPLE,
    GRID_SIZES,
    KIND_EA,
    KIND_NAMES,
    KIND_NORMAL,
    KIND_SA,
    MAX_TRIES,
    POLYGON_RADIUS,
    POLYGON_VERTICES,
    RECT_HALF_SIDE,
    ROTATE_DEGREES,
    SHEAR_DEGREES,
    SynthesisConfig,
    SynthesizedBatch,
    batch_composition,
)
from prn_edge.data.synthesis.masks import target_area
from prn_edge.data.synthesis.preview import preview_grid
from prn_edge.data.synthesis.synthesizer import AnomalySynthesizer
from prn_edge.data.synthesis.textures import load_textures

__all__ = [
    "CIRCLE_RADIUS",
    "COLOUR_OPS",
    "COLOUR_OPS_PER_SAMPLE",
    "EA_OPS",
    "EA_OPS_PER_SAMPLE",
    "GRID_SIZES",
    "KIND_EA",
    "KIND_NAMES",
    "KIND_NORMAL",
    "KIND_SA",
    "MAX_TRIES",
    "POLYGON_RADIUS",
    "POLYGON_VERTICES",
    "RECT_HALF_SIDE",
    "ROTATE_DEGREES",
    "SHEAR_DEGREES",
    "AnomalySynthesizer",
    "SynthesisConfig",
    "SynthesizedBatch",
    "_grid_shuffle",
    "batch_composition",
    "load_textures",
    "preview_grid",
    "target_area",
]
