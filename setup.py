"""
Build of zimage._zimage: gcc compiles csrc/*.c (C11, OpenMP); when nvcc is found (and
ZIMAGE_CUDA is not "0") nvcc compiles kernels/*.cu into a fat binary for sm_80, sm_86, sm_89
and sm_90a (narrow with ZIMAGE_CUDA_ARCH="90a" or "80;90a"), and the extension links cudart
(static, so one wheel imports on machines without a GPU or driver), cuBLAS and cuBLASLt.
"""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from glob import glob

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "80;86;89;90a"


def locate_cuda():
    """Return the CUDA home (with bin/nvcc) or None when the CUDA build is off or impossible."""
    if os.environ.get("ZIMAGE_CUDA", "1") == "0":
        return None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            nvcc = "/usr/local/cuda/bin/nvcc"
        else:
            return None
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return {"home": home, "nvcc": nvcc, "include": os.path.join(home, "include"), "lib": os.path.join(home, "lib64")}


def gencode_flags():
    flags = []
    for arch in os.environ.get("ZIMAGE_CUDA_ARCH", DEFAULT_ARCHS).replace(",", ";").split(";"):
        arch = arch.strip()
        if arch:
            flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return flags


class BuildExt(build_ext):
    """Compiles kernels/*.cu with nvcc (in parallel) before the C sources are linked."""

    def build_extensions(self):
        cuda = locate_cuda()
        ext = self.extensions[0]
        if cuda:
            objs = self.compile_cuda(cuda)
            ext.extra_objects += objs
            ext.define_macros.append(("ZI_WITH_CUDA", "1"))
            ext.include_dirs.append(cuda["include"])
            ext.library_dirs.append(cuda["lib"])
            ext.runtime_library_dirs.append(cuda["lib"])
            ext.libraries += ["cublasLt", "cublas", "cudart_static", "rt", "dl", "stdc++"]
            print(f"zimage: building with CUDA from {cuda['home']}", file=sys.stderr)
        else:
            # the CUDA backend's host file needs the CUDA headers and libraries: leave it out
            ext.sources = [s for s in ext.sources if os.path.basename(s) != "ops_cuda.c"]
            print("zimage: building the CPU-only extension (no nvcc, or ZIMAGE_CUDA=0)", file=sys.stderr)
        super().build_extensions()

    def compile_cuda(self, cuda):
        sources = sorted(glob(os.path.join(ROOT, "kernels", "*.cu")))
        out_dir = os.path.join(self.build_temp, "kernels")
        os.makedirs(out_dir, exist_ok=True)
        flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-lineinfo",
                 "-I" + os.path.join(ROOT, "kernels"), "-I" + os.path.join(ROOT, "csrc")] + gencode_flags()

        def one(src):
            obj = os.path.join(out_dir, os.path.basename(src) + ".o")
            deps = [src] + glob(os.path.join(ROOT, "kernels", "*.cuh")) + glob(os.path.join(ROOT, "kernels", "*.h"))
            if os.path.exists(obj) and os.path.getmtime(obj) >= max(os.path.getmtime(d) for d in deps):
                return obj
            cmd = [cuda["nvcc"], "-c", src, "-o", obj] + flags
            print(" ".join(cmd), file=sys.stderr)
            subprocess.check_call(cmd)
            return obj

        jobs = int(os.environ.get("ZIMAGE_BUILD_JOBS", os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, sources))


ext = Extension(
    "zimage._zimage",
    sources=sorted(glob("csrc/*.c")),
    include_dirs=[numpy.get_include(), "csrc", "kernels"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_21_API_VERSION")],
    extra_compile_args=["-std=gnu11", "-O2", "-fopenmp", "-Wall", "-Wno-unused-parameter"],
    libraries=["z"],
    extra_link_args=["-fopenmp", "-lpthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
