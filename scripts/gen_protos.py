"""Generate nessa/v1 from proto/nessa/v1 (the proto path mirrors the package, so no import rewriting).

Usage: ``python scripts/gen_protos.py`` writes the stubs; ``--check`` regenerates into a temporary
directory and fails if the committed stubs differ (CI runs it).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = Path("nessa") / "v1"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))
    if not protos:
        return []
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out_dir / PACKAGE / "__init__.py"
    init.write_text('"""Generated protobuf and gRPC code for nessa.v1 (do not edit; run `make protos`)."""\n')
    return sorted((out_dir / PACKAGE).iterdir())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        target = ROOT / PACKAGE
        stale = []
        for f in files:
            if f.name == "__pycache__":
                continue
            dest = target / f.name
            if args.check:
                if not dest.exists() or not filecmp.cmp(f, dest, shallow=False):
                    stale.append(str(dest.relative_to(ROOT)))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        if args.check and stale:
            print("stale generated code (run `make protos`): " + ", ".join(stale), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
