"""Build the C++ selector extension; everything else is declared in pyproject.toml.

Portable -O3 by default. Set ROUTOO_NATIVE=1 to add -march=native for a machine-local build.
"""
import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

# -ffp-contract=off: no fused multiply-adds, so results stay bit-identical to the numpy reference
# even when ROUTOO_NATIVE=1 enables FMA instructions.
extra_compile_args = ["-O3", "-fno-math-errno", "-fvisibility=hidden", "-ffp-contract=off"]
if os.environ.get("ROUTOO_NATIVE") == "1":
    extra_compile_args.append("-march=native")

ext_modules = [
    Pybind11Extension(
        "routoo_fast._selector",
        ["csrc/bindings.cpp"],
        include_dirs=["csrc/include"],
        depends=[os.path.join("csrc/include/routoo", f) for f in sorted(os.listdir("csrc/include/routoo"))],
        cxx_std=17,
        extra_compile_args=extra_compile_args,
    )
]

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    # the subpackages of routoo_fast (data, train, evaluation, ...) are found; kernels/ installs as routoo_fast.kernels
    packages=find_packages(include=["routoo_fast", "routoo_fast.*"]) + ["routoo_fast.kernels"],
    package_dir={"routoo_fast": "routoo_fast", "routoo_fast.kernels": "kernels"},
    package_data={"routoo_fast": ["assets/*", "assets/**/*"]},
    include_package_data=True,
    zip_safe=False,
)
