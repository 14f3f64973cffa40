"""The CUDA sources compile (nvcc for sm_80 / sm_90), the extension links and imports against
this torch, and `import kvbucket.cuda` stays free of torch."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_kernel_compiles_with_nvcc(nvcc: str, cuda_dir: Path, tmp_path: Path, arch: str) -> None:
    obj = tmp_path / f"kvbucket_cuda_{arch}.o"
    cmd = [nvcc, f"-arch={arch}", "-O3", "-std=c++17", "-Werror", "all-warnings", "-c",
           str(cuda_dir / "kvbucket_cuda.cu"), "-o", str(obj)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr
    assert obj.stat().st_size > 0
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert " T kvb_copy_blocks" in symbols  # the C entry binding.cpp calls


@pytest.fixture(scope="module")
def cuda_home(nvcc: str) -> Path:
    candidates = (Path(nvcc).resolve().parent.parent, Path("/usr/local/cuda"))
    home = next((p for p in candidates if (p / "include" / "cuda_runtime_api.h").exists()), None)
    if home is None or not (home / "lib64" / "libcudart.so").exists():
        pytest.skip(f"no CUDA runtime headers and libcudart.so under {', '.join(map(str, candidates))}")
    return home


@pytest.mark.slow
def test_extension_links_imports_and_checks_its_arguments(
    gxx: str, nvcc: str, cuda_home: Path, cuda_dir: Path, tmp_path: Path
) -> None:
    """binding.cpp + the kernel object link into an importable module against this (CPU) torch
    and libcudart. No GPU here, so only the argument checks before a launch can run."""
    import torch
    from torch.utils.cpp_extension import include_paths

    name = "kvbucket_cuda_linktest"
    lib = tmp_path / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{cuda_dir}", f"-I{cuda_home / 'include'}", f"-I{sysconfig.get_paths()['include']}",
                *(f"-I{p}" for p in include_paths())]
    steps = [
        [nvcc, "-arch=sm_80", "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-c",
         str(cuda_dir / "kvbucket_cuda.cu"), "-o", str(tmp_path / "kernel.o")],
        [gxx, "-std=c++20", "-O0", "-fPIC", "-Wall", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
         f"-DTORCH_EXTENSION_NAME={name}", *includes, "-c", str(cuda_dir / "binding.cpp"),
         "-o", str(tmp_path / "binding.o")],
        [gxx, "-shared", str(tmp_path / "binding.o"), str(tmp_path / "kernel.o"), "-o", str(lib),
         f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python", f"-L{cuda_home / 'lib64'}",
         "-lcudart", f"-Wl,-rpath,{torch_lib}", f"-Wl,-rpath,{cuda_home / 'lib64'}"],
    ]
    for cmd in steps:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    code = f"""
import importlib.util, torch
spec = importlib.util.spec_from_file_location({name!r}, {str(lib)!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
ids = torch.zeros(1, dtype=torch.int64)
try:
    m.copy_blocks([torch.zeros(2, 3, 4, 2, 8)], ids, ids, torch.zeros(1, 2, 4, 2, 8), 0, True, 0)
except RuntimeError as e:
    assert "must be CUDA tensors" in str(e), e
else:
    raise SystemExit("CPU tensors were accepted")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]


def test_import_does_not_load_torch() -> None:
    code = (
        "import sys, kvbucket.cuda as c; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert c.PagedLayout.parse('cpu') == 2"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_load_built_without_a_build_is_none(tmp_path: Path) -> None:
    from kvbucket.cuda import build

    assert build.load_built(tmp_path) is None
