"""PRN in PyTorch: the reference model (needs torch; import lazily from light modules).

``python -m prn_edge.model --config {paper,edge} --backbone {resnet18,efficientnet_lite0}``
prints a summary of the architecture.
"""
from prn_edge.model.prn import PRN, PRNOutput

__all__ = ["PRN", "PRNOutput"]
