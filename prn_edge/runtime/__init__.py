"""The edge runtime: numpy, OpenCV and one inference engine; never torch.

Importing this package must work on a device where only numpy and OpenCV are installed
(OpenCV itself is imported on first use, with an install hint if it is missing).
"""
from prn_edge.runtime.preprocess import RESIZE_POLICIES, crop_roi, prepare_frame, resize_image, to_rgb

__all__ = ["RESIZE_POLICIES", "crop_roi", "prepare_frame", "resize_image", "to_rgb"]
