"""The workers' one compiled piece: the comparison kernel, a plain C library.

It is loaded with ctypes (``gradserve_workers/_native.py``), so it needs no Python
or torch headers. ``optional=True``: without a C compiler the install still
succeeds and the workers use the eager torch comparison, with the same results.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "gradserve_workers/native/compare_rows.c"
# the library names the source it was built from; _native.py checks it (same rule)
SOURCE_ID = int(hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()[:15], 16)

setup(
    ext_modules=[
        Extension(
            "gradserve_workers._compare_rows",
            sources=[SOURCE],
            define_macros=[("GS_SOURCE_ID", f"{SOURCE_ID}ULL")],
            # bit-for-bit the IEEE operations of the torch code it replaces: no fused
            # multiply-add contraction, no fast-math
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno"],
            optional=True,
        )
    ]
)
