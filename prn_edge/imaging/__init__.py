"""The imaging layer: image files and frames to the model's input (numpy + OpenCV only, no torch).

* :mod:`.read`: the one image reader: the extension list (:data:`IMAGE_EXTENSIONS`),
  :func:`is_image`, :func:`list_images`, :func:`read_image`, :func:`read_mask`, and the one
  pixel conversion (:func:`to_uint8`, :func:`to_rgb`: 16-bit, grey, alpha);
* :mod:`.preprocess`: region of interest, the resize policies, :func:`prepare_frame` (frame ->
  uint8 RGB model input) and :class:`FrameGeometry` (model pixels <-> frame pixels).

A leaf layer: it imports nothing of ``prn_edge`` but :mod:`prn_edge.errors`.
"""
from prn_edge.imaging.preprocess import (
    RESIZE_POLICIES,
    FrameGeometry,
    crop_roi,
    frame_geometry,
    prepare_frame,
    resize_image,
)
from prn_edge.imaging.read import (
    CHANNEL_ORDERS,
    IMAGE_EXTENSIONS,
    decode_image,
    is_image,
    list_images,
    read_image,
    read_mask,
    to_rgb,
    to_uint8,
)

__all__ = ["CHANNEL_ORDERS", "IMAGE_EXTENSIONS", "RESIZE_POLICIES", "FrameGeometry", "crop_roi", "decode_image",
           "frame_geometry", "is_image", "list_images", "prepare_frame", "read_image", "read_mask",
           "resize_image", "to_rgb", "to_uint8"]
