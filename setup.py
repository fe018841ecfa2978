"""Build of gradfit's optional C kernel (everything else is in pyproject.toml).

``gradfit._fused`` computes a linear model's MSE loss and gradient in one pass over the
design (see fastopt.LinearMSE). It is optional: where no C compiler is at hand the build
goes on without it, and gradfit uses torch's matrix-vector products instead.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    args = ["/O2", "/std:c11", "/openmp:experimental"]
else:
    args = ["-O3", "-fopenmp-simd", "-std=c99"]

setup(
    ext_modules=[
        Extension("gradfit._fused", ["src/gradfit/_fused.c"], extra_compile_args=args, optional=True),
    ]
)
