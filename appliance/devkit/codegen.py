"""Generate appliance/wire/_generated from proto/ with grpcio-tools.

The generated modules are committed (the device image and a fresh clone import them without
grpcio-tools, a development tool: hence the devkit); tests/unit/wire/test_codegen.py
regenerates into a temporary folder and fails when the result differs from what is committed.
Run it with `make proto`.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
OUT_DIR = REPO / "appliance" / "wire" / "_generated"
PROTOS = ("eventbus.proto",)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every proto into out_dir; return the files written."""
    from grpc_tools import protoc  # dev dependency: imported only when generating

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    for grpc_file in out_dir.glob("*_pb2_grpc.py"):
        # grpc_tools emits top-level imports ("import eventbus_pb2"); make them package-relative.
        text = re.sub(
            r"^import (\w+_pb2) as", r"from . import \1 as", grpc_file.read_text(), flags=re.M
        )
        grpc_file.write_text(text)
    init = out_dir / "__init__.py"
    init.write_text('"""Code generated from proto/ by appliance.devkit.codegen: do not edit."""\n')
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def main() -> int:
    """Regenerate the committed modules in place."""
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        for f in files:
            (OUT_DIR / f.name).write_bytes(f.read_bytes())
    print(f"generated {len(files)} files in {OUT_DIR.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
