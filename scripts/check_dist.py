"""Check what ``python -m build`` put in DIST (an sdist and one or more wheels).

    python scripts/check_dist.py DIST [--pure]

sdist: the Cython and C sources (.pyx, .pxd, .h), LICENSE, CHANGELOG.md,
setup.py, pyproject.toml, the tests; no generated C (``src/fastmetrics/*.c``),
no compiled module (.so/.pyd), no build/ directory.
wheel: both extension modules (unless ``--pure``), the .pxd and .h a
downstream Cython module compiles against (``fastmetrics.get_include()``), the
LICENSE under ``.dist-info/licenses/``; no generated C.
Exit status 1 with one line per problem; stdlib only.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import List

PKG = "fastmetrics"
EXTENSIONS = ("_core_c", "_dispatch_c")
SOURCES = ("_core_c.pyx", "_core_c.pxd", "_dispatch_c.pyx", "_atomics.h", "_shards.h", "_arena.h", "_promfile.h", "_pydict.h",
           "_fastcall.h", "_fastcall.pxd")


def check_sdist(path: Path) -> List[str]:
    with tarfile.open(path) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    problems = [f"{path.name}: missing {want}"
                for want in [f"src/{PKG}/{s}" for s in SOURCES]
                + ["LICENSE", "CHANGELOG.md", "README.md", "setup.py", "pyproject.toml", "tests/conftest.py"]
                if want not in names]
    for name in names:
        if name.startswith(f"src/{PKG}/") and name.endswith((".c", ".cpp", ".html")):
            problems.append(f"{path.name}: generated file {name}")
        if name.endswith((".so", ".pyd", ".dylib", ".o")) or name.startswith("build/") or "__pycache__" in name:
            problems.append(f"{path.name}: build product {name}")
    return problems


def check_wheel(path: Path, pure: bool) -> List[str]:
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
    problems = [f"{path.name}: missing {PKG}/{s}" for s in SOURCES if f"{PKG}/{s}" not in names]
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append(f"{path.name}: no .dist-info/licenses/LICENSE")
    for ext in EXTENSIONS:
        built = [n for n in names if n.startswith(f"{PKG}/{ext}.") and n.endswith((".so", ".pyd"))]
        if pure and built:
            problems.append(f"{path.name}: a pure-Python wheel holds {built}")
        if not pure and not built:
            problems.append(f"{path.name}: no compiled {PKG}.{ext}")
    problems += [f"{path.name}: generated C {n}" for n in names if n.endswith((".c", ".cpp"))]
    return problems


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", type=Path)
    parser.add_argument("--pure", action="store_true", help="the wheels hold no extension")
    args = parser.parse_args(argv)
    sdists = sorted(args.dist.glob("*.tar.gz"))
    wheels = sorted(args.dist.glob("*.whl"))
    problems = [] if sdists or wheels else [f"{args.dist}: no sdist and no wheel"]
    for sdist in sdists:
        problems += check_sdist(sdist)
    for wheel in wheels:
        problems += check_wheel(wheel, args.pure)
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_dist: OK ({', '.join(p.name for p in sdists + wheels)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
