"""Build and load the ``kvbucket_cuda`` torch extension.

    python -m kvbucket.cuda.build [--build-dir DIR] [--arch "8.0;9.0"] [--verbose]

Compiles ``binding.cpp`` + ``kvbucket_cuda.cu`` with ``torch.utils.cpp_extension.load`` (ninja,
nvcc, a CUDA build of torch) into ``DIR/kvbucket_cuda.so``. ``load_built`` only loads what a build
left behind and never compiles, so a worker never stalls on nvcc; without it gather.py uses torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from pathlib import Path
from types import ModuleType

NAME = "kvbucket_cuda"
HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "binding.cpp", HERE / "kvbucket_cuda.cu")
HEADERS = (HERE / "kv_index.h",)
DEFAULT_BUILD_DIR = HERE / "_build"

log = logging.getLogger(__name__)


def build(build_dir: Path = DEFAULT_BUILD_DIR, *, verbose: bool = False) -> ModuleType:
    """Compile (or reuse an up-to-date build of) the extension and return it."""
    from torch.utils.cpp_extension import load

    build_dir.mkdir(parents=True, exist_ok=True)
    return load(
        name=NAME,
        sources=[str(p) for p in SOURCES],
        extra_include_paths=[str(HERE)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        build_directory=str(build_dir),
        verbose=verbose,
    )


def load_built(build_dir: Path = DEFAULT_BUILD_DIR) -> ModuleType | None:
    """The extension a previous ``build`` left in ``build_dir``; None if absent or stale."""
    path = build_dir / f"{NAME}.so"
    if not path.exists():
        return None
    built = path.stat().st_mtime
    if any(src.stat().st_mtime > built for src in SOURCES + HEADERS):
        log.warning("%s is older than its sources; rebuild with `python -m kvbucket.cuda.build`", path)
        return None
    import torch  # noqa: F401  (the extension links against libtorch, load it first)

    spec = importlib.util.spec_from_file_location(NAME, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR)
    parser.add_argument("--arch", help='compute capabilities, e.g. "8.0;9.0" (default: the visible GPUs)')
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch  # how torch's builder takes target archs
    module = build(args.build_dir, verbose=args.verbose)
    print(f"built {module.__file__}")


if __name__ == "__main__":
    main()
