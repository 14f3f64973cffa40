"""Regenerate the Python modules beside the .proto files.

    python proto/generate.py          # write proto/*_pb2*.py
    python proto/generate.py --check  # exit 1 when the committed files are stale (CI)

grpcio-tools 1.78.x is pinned (dev extra): its gencode (protobuf 6.31.1) imports on protobuf 6 and 7
alike, which keeps the client installable next to LMCache (protobuf<7).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The .proto files import each other as kvbucket/proto/<name>.proto, which is also the Python package.
VIRTUAL = "kvbucket/proto"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc

    protos = sorted(HERE.glob("*.proto"))
    args = [
        "protoc",
        f"-I{VIRTUAL}={HERE}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[f"{VIRTUAL}/{p.name}" for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / VIRTUAL).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when generated files are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            f.name for f in fresh if not (HERE / f.name).exists() or not filecmp.cmp(f, HERE / f.name, shallow=False)
        ]
        if args.check:
            if stale:
                print(f"stale generated files: {', '.join(stale)}; run: python proto/generate.py", file=sys.stderr)
                return 1
            print("generated proto code is up to date")
            return 0
        for f in fresh:
            shutil.copyfile(f, HERE / f.name)
        print(f"wrote {len(fresh)} files to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
