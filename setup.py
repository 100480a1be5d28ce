"""fastfields: fused GPU kernels for 3D neural fields.

The package is pure Python; the C++/CUDA kernels in csrc/ ship as sources and are
built just-in-time with ninja on first use. Set FASTFIELDS_BUILD_EXT=1 to build
them ahead of time instead (FASTFIELDS_BUILD_CUDA=0 skips the CUDA one).
"""

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(ROOT, "fastfields", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip('"')
    raise RuntimeError("__version__ not found in fastfields/__init__.py")


def ahead_of_time_extensions():
    """Extension modules for FASTFIELDS_BUILD_EXT=1; the loader finds them before trying a JIT build."""
    if os.environ.get("FASTFIELDS_BUILD_EXT", "0") != "1":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

    include = [os.path.join(ROOT, "csrc", "include")]
    extensions = [
        CppExtension(
            "fastfields._C_cpu",
            sorted(glob.glob("csrc/cpu/*.cpp")),
            include_dirs=include,
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
            extra_link_args=["-fopenmp"],
        )
    ]
    import torch

    wants_cuda = os.environ.get("FASTFIELDS_BUILD_CUDA", "1") == "1"
    if wants_cuda and CUDA_HOME is not None and torch.version.cuda is not None:
        extensions.append(
            CUDAExtension(
                "fastfields._C_cuda",
                sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu")),
                include_dirs=include,
                extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
            )
        )
    return extensions, {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = ahead_of_time_extensions()

MODELS = ["pillow", "imageio>=2.20", "PyMCubes>=0.1.4", "trimesh>=4", "safetensors", "tqdm", "scikit-image>=0.20"]

setup(
    name="fastfields",
    version=read_version(),
    description="Fused GPU kernels (Triton, CUDA, C++) for 3D neural fields, and lean LRM/EG3D/SSDNeRF/ZeroRF/DiffRF models",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=[
        "fastfields",
        "fastfields.ops",
        "fastfields.reference",
        "fastfields.bench",
        "fastfields.rendering",
        "fastfields.datasets",
        "fastfields.apps",
        "fastfields._data",
        "fastfields.kernels",
        "fastfields.models",
        "fastfields.models.diffrf",
        "fastfields.models.eg3d",
        "fastfields.models.lrm",
        "fastfields.models.ssdnerf",
        "fastfields.models.tensorf",
        "fastfields.csrc",
    ],
    package_dir={
        "fastfields": "fastfields",
        "fastfields.kernels": "kernels",
        "fastfields.models": "models",
        "fastfields.csrc": "csrc",
        "fastfields._data": "data",
    },
    # The C++/CUDA sources travel with the package so the JIT build works from a wheel too.
    package_data={
        "fastfields.csrc": ["*/*.cpp", "*/*.cu", "*/*.cuh", "include/fastfields/*.h"],
        # the NeRF-synthetic mic views the zerorf job and its tests default to
        "fastfields._data": ["mic/*.npz", "mic/README.md", "meshes/README.md", "meshes/*/*"],
    },
    install_requires=["torch>=2.4", "numpy", "ninja"],
    extras_require={
        "triton": ["triton>=3.0"],
        # The model jobs (fastfields lrm / zerorf): image and video I/O, meshes, weights, progress.
        "models": MODELS,
        "test": ["pytest>=7", "pytest-benchmark>=4", "triton>=3.0", "pybind11"] + MODELS,
        "bench": ["pytest-benchmark>=4", "matplotlib>=3.5", "triton>=3.0"] + MODELS,
    },
    entry_points={"console_scripts": ["fastfields=fastfields.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
