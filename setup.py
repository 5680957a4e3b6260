"""The one compiled part of vrcurve: the fused kernel of the CPU engine (vrcurve/_fused.c).

Everything else is in pyproject.toml. The extension is optional: where it does not build (no C compiler,
no OpenMP), vrcurve installs without it and the engine runs the same work as PyTorch operations
(`vrcurve estimate` prints which ran: kernel fused or pytorch). It is plain C, with no Python or PyTorch
headers, loaded by ctypes.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vrcurve._fused",
            sources=["vrcurve/_fused.c"],
            # -fno-wrapv undoes Python's -fwrapv: with it the quadratic-form kernel ran 1.4x slower
            # (its row and pair offsets lose their loop optimisations), measured by bench_engine.py.
            extra_compile_args=["-O3", "-fno-wrapv", "-fopenmp", "-fvisibility=hidden"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
