"""The workers' one compiled piece: the comparison kernel, a plain C library.

It is loaded with ctypes (``gradserve_workers/_native.py``), so it needs no Python
or torch headers. ``optional=True``: without a C compiler the install still
succeeds and the workers use the eager torch comparison, with the same results.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gradserve_workers._compare_rows",
            sources=["gradserve_workers/native/compare_rows.c"],
            # bit-for-bit the IEEE operations of the torch code it replaces: no fused
            # multiply-add contraction, no fast-math
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno"],
            optional=True,
        )
    ]
)
