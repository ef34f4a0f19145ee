"""fastblocks build: pure-Python package plus an optional C++/CUDA extension (fastblocks._C).

The extension is built when csrc/ has sources and torch's cpp_extension can compile them:
- csrc/bindings.cpp (op schemas, module init): always, when the extension is built.
- C++ CPU kernels (csrc/*_cpu.cpp, each ISA copy of their loops in csrc/*_cpu_<isa>.cpp): unless
  FASTBLOCKS_BUILD_CPU=0. On x86-64 the AVX2 and AVX-512 copies, and the baseline (pre-AVX2) copy
  only with FASTBLOCKS_CPU_BASELINE=1 (without it the cpu backend reports itself unavailable on a
  CPU without AVX2 + FMA).
- CUDA kernels (csrc/*.cu): FASTBLOCKS_BUILD_CUDA=1 builds them (a missing toolkit is then an
  error; no GPU is needed to compile them), =0 never; unset ("auto"), they are built when a CUDA
  toolkit is found and a GPU is visible, so a CPU-only install skips the minutes nvcc takes.
  Arch list: TORCH_CUDA_ARCH_LIST, default "9.0". nvcc gets -O3 -std=c++20 (torch's headers need
  C++20) and NO --use_fast_math: expf / division stay IEEE-accurate (float32 forward tolerance
  is 1e-5). Headers that the local toolkit lacks are taken from the nvidia/cu* wheels.
- CUDA emulation (fastblocks._C_cuda_emulated): FASTBLOCKS_BUILD_CUDA_EMULATION=1 builds the same
  .cu sources with the host compiler for a CPU emulator (csrc/emulation/; no toolkit or GPU
  needed), for the tests' cuda_emulated backend. FASTBLOCKS_BUILD_CPU=0 FASTBLOCKS_BUILD_CUDA=0
  with it builds that module alone.
Without a compiler or with FASTBLOCKS_BUILD_EXT=0 the package installs pure Python: import and
the reference / eager / triton backends still work.
"""

import glob
import os
import platform
import shutil
import site
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))

def _flag(name, default):
    value = os.environ.get(name, default).strip().lower()
    return value not in ("0", "false", "no", "off", "")


def _nvidia_include_dirs():
    dirs = []
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        dirs += glob.glob(os.path.join(base, "nvidia", "cu*", "include"))
        dirs += glob.glob(os.path.join(base, "nvidia", "*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def _has_cudart(home):
    return any(glob.glob(os.path.join(home, d, "libcudart.so*")) for d in ("lib64", "lib", "targets/*/lib"))


def _find_cuda_home():
    """The toolkit to build with: CUDA_HOME / CUDA_PATH when set, else the first of (the toolkit
    above `nvcc` on PATH, /usr/local/cuda, /usr/local/cuda-*) that has bin/nvcc and libcudart.
    torch's own guess takes `which nvcc`'s grandparent, which is wrong when nvcc on PATH is a
    wrapper script (/usr/local/bin/nvcc -> links against /usr/local/lib, which has no libcudart)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and _has_cudart(home):
            return home
    return None


def _baseline_copy_wanted() -> bool:
    """Whether to compile the baseline (pre-AVX2) copy of the CPU kernels. It is 40% of the
    extension's compile time and runs only on x86-64 CPUs without AVX2 + FMA, so on x86-64 it is
    built on request (FASTBLOCKS_CPU_BASELINE=1); elsewhere it is the only copy, always built."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    return os.environ.get("FASTBLOCKS_CPU_BASELINE", "0").strip().lower() in ("1", "true", "yes", "on")


def extensions():
    if not _flag("FASTBLOCKS_BUILD_EXT", "1"):
        return [], {}
    # Host code (csrc/<family>_cpu.cpp) and one translation unit per ISA copy of its kernels
    # (csrc/<family>_cpu_<isa>.cpp), so that ninja compiles the copies in parallel.
    cpu_kernels = sorted(glob.glob("csrc/*_cpu*.cpp")) if _flag("FASTBLOCKS_BUILD_CPU", "1") else []
    baseline = _baseline_copy_wanted()
    if not baseline:
        cpu_kernels = [f for f in cpu_kernels if not f.endswith("_cpu_default.cpp")]
    cu = sorted(glob.glob("csrc/*.cu"))
    if not cpu_kernels and not cu:
        return [], {}
    cuda_home = _find_cuda_home()
    if cuda_home is not None:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("fastblocks: torch not importable at build time; skipping the extension", file=sys.stderr)
        return [], {}
    want_cuda = os.environ.get("FASTBLOCKS_BUILD_CUDA", "auto").strip().lower()
    # nvcc, and a torch built with CUDA (a CPU-only torch wheel has no CUDA libraries to link).
    has_cuda = (cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None
                and os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")))
    if want_cuda in ("1", "true", "yes", "on") and not has_cuda:
        raise RuntimeError("FASTBLOCKS_BUILD_CUDA=1 but no CUDA toolkit (CUDA_HOME / nvcc) was found, "
                           "or torch was built without CUDA")
    if want_cuda in ("1", "true", "yes", "on"):
        use_cuda = bool(cu)
    elif want_cuda in ("0", "false", "no", "off"):
        use_cuda = False
    else:  # auto: only where the kernels can run
        use_cuda = bool(cu) and has_cuda and torch.cuda.is_available()
    emulation = _flag("FASTBLOCKS_BUILD_CUDA_EMULATION", "0") and bool(cu)
    exts = [_cuda_emulation_extension(cpp_extension, cu)] if emulation else []
    if not cpu_kernels and not use_cuda:  # e.g. the emulation module alone
        return exts, ({"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)} if exts else {})
    if use_cuda:
        print(f"fastblocks: building the CUDA kernels ({len(cu)} .cu files, TORCH_CUDA_ARCH_LIST="
              f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '9.0')})", file=sys.stderr)
    elif cu:
        print("fastblocks: building without the CUDA kernels (no GPU or toolkit found, or FASTBLOCKS_BUILD_CUDA=0; "
              "FASTBLOCKS_BUILD_CUDA=1 builds them)", file=sys.stderr)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    cpp = ["csrc/bindings.cpp"] + cpu_kernels
    # -g0: Python's CFLAGS carry -g; debug info for the kernel templates costs compile time and
    # memory (and a .so ten times larger) for symbols nobody steps through.
    cxx = ["-O3", "-g0", "-std=c++20", "-fopenmp"]
    macros = [("FASTBLOCKS_WITH_CPU", "1")] if cpu_kernels else []
    if cpu_kernels and not baseline:
        macros.append(("FB_NO_BASELINE_COPY", "1"))
    kwargs = dict(extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
                  include_dirs=[os.path.join(ROOT, "csrc")])
    if use_cuda:
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++20"]
        kwargs["include_dirs"] += _nvidia_include_dirs()
        macros.append(("FASTBLOCKS_WITH_CUDA", "1"))
        ext = cpp_extension.CUDAExtension("fastblocks._C", cpp + cu, define_macros=macros, **kwargs)
    else:
        ext = cpp_extension.CppExtension("fastblocks._C", cpp, define_macros=macros, **kwargs)
    build = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext] + exts, {"build_ext": build}


def _cuda_emulation_extension(cpp_extension, cu):
    """fastblocks._C_cuda_emulated: the CUDA kernels (csrc/*.cu, the same sources nvcc compiles)
    built by the host compiler against csrc/emulation/cuda_emulation.h and run on the CPU emulator
    (csrc/emulation/). Each .cu is compiled through a one-line .cpp that includes it (torch's build
    hands .cu files to nvcc), generated under build/cuda_emulation/."""
    out_dir = os.path.join(ROOT, "build", "cuda_emulation")
    os.makedirs(out_dir, exist_ok=True)
    wrappers = []
    for path in cu:
        name = os.path.basename(path)
        if name.startswith("bindings"):
            continue  # registers fastblocks_kernels' CUDA key; csrc/emulation/bindings.cpp registers these
        wrapper = os.path.join(out_dir, name[:-3] + ".cpp")
        text = f'// Generated by setup.py: csrc/{name} for the CUDA emulator.\n#include "{name}"\n'
        if not os.path.exists(wrapper) or open(wrapper).read() != text:
            with open(wrapper, "w") as f:
                f.write(text)
        wrappers.append(os.path.relpath(wrapper, ROOT))
    print(f"fastblocks: building the CUDA emulation module ({len(wrappers)} .cu files on the host compiler)",
          file=sys.stderr)
    return cpp_extension.CppExtension(
        "fastblocks._C_cuda_emulated", sorted(glob.glob("csrc/emulation/*.cpp")) + wrappers,
        define_macros=[("FASTBLOCKS_CUDA_EMULATION", "1")],
        # CUDA code reads vector registers through other pointer types (load_pack / store_pack):
        # nvcc allows it; the host compiler needs -fno-strict-aliasing to keep those reads in order.
        extra_compile_args={"cxx": ["-O2", "-g0", "-std=c++20", "-fno-strict-aliasing", "-Wno-unknown-pragmas"]},
        include_dirs=[os.path.join(ROOT, "csrc")])


ext_modules, cmdclass = extensions()

# Metadata, packages and dependencies live in pyproject.toml; this file only builds the extension.
setup(ext_modules=ext_modules, cmdclass=cmdclass, zip_safe=False)
