"""Kernel tests: run Triton in the interpreter on machines without CUDA.

TRITON_INTERPRET is read when a ``@triton.jit`` function is decorated, so it must be set before
``attnplug.kernels.block_sparse.triton`` is imported (the package imports that module lazily).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))  # kernel_testutil

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
