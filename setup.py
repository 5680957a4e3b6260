"""The one compiled part of vrcurve: the fused kernel of the CPU engine (vrcurve/_fused.c).

Everything else is in pyproject.toml. The extension is optional: where it does not build (no C compiler,
no OpenMP), vrcurve installs without it and the engine runs the same work as PyTorch operations
(`vrcurve estimate` prints which ran, and why). It is plain C, with no Python or PyTorch headers, loaded
by ctypes (vrcurve/_kernel.py).

The kernel's ABI version is defined once, as ``ABI_VERSION`` in vrcurve/_kernel.py; it reaches the C code
as the macro VR_ABI_VERSION, so a library from another version of vrcurve is refused when it is loaded.
"""

import re
from pathlib import Path

from setuptools import Extension, setup

_ABI = re.search(r"^ABI_VERSION = (\d+)$", (Path(__file__).parent / "vrcurve" / "_kernel.py").read_text(), re.M)

setup(
    ext_modules=[
        Extension(
            "vrcurve._fused",
            sources=["vrcurve/_fused.c"],
            define_macros=[("VR_ABI_VERSION", _ABI.group(1))],
            # -fno-wrapv undoes Python's -fwrapv: with it the quadratic-form kernel ran 1.4x slower
            # (its row and pair offsets lose their loop optimisations), measured by bench_engine.py.
            extra_compile_args=["-O3", "-fno-wrapv", "-fopenmp", "-fvisibility=hidden"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
