"""Package marker: this folder is installed as ``prn_edge.cuda`` (setup.py's ``package_dir``).

It holds no Python. The CUDA sources beside it are package data, located with
:func:`prn_edge.kernels.kernels_dir` (``importlib.resources``), from a wheel as from a checkout.
"""
