"""Training: data loading for a category, the training loop, and ``prn-train``."""
