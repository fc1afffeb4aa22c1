"""Make a virtual environment that holds only the GPU image's packages, for the CPU rehearsal.

    python bench/gpu_emulate.py SOURCE_SITE_PACKAGES DEST [--names bench/gpu_image_packages.txt]

Creates the venv ``DEST`` (this interpreter's version, no system site-packages) and links into
its site-packages every distribution of ``SOURCE_SITE_PACKAGES`` (e.g. the project's
``.venv/lib/python3.11/site-packages``) whose name is in the image's package list, and nothing
else. Run with that venv's python, bench/gpu_full.sh then sees what the GPU machine has (at this
machine's versions, and JAX on the CPU) plus the carried wheels: an import the wheel set lacks
fails here as it would there.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path


def norm(name: str) -> str:
    """PEP 503 name: ``norm("Typing_Extensions") == "typing-extensions"``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_names(path: Path) -> set[str]:
    """Normalised package names of a list file (one a line, ``#`` comments)."""
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return {norm(ln) for ln in lines if ln}


def link_image(source: Path, site: Path, allowed: set[str]) -> list[str]:
    """Link the top-level entries of every allowed distribution of ``source`` into ``site``."""
    linked = []
    for dist in md.distributions(path=[str(source)]):
        name = norm(dist.metadata["Name"])
        if name not in allowed or name in ("pip", "setuptools", "wheel"):
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if Path(str(f)).parts}
        for top in sorted(tops):
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            target = site / top
            if not target.exists() and (source / top).exists():
                target.symlink_to(source / top)
        linked.append(name)
    return sorted(set(linked))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu_emulate.py", description=__doc__)
    parser.add_argument("source", type=Path, help="site-packages to take the image's packages from")
    parser.add_argument("dest", type=Path, help="the venv to create")
    parser.add_argument("--names", type=Path,
                        default=Path(__file__).with_name("gpu_image_packages.txt"))  # fmt: skip
    args = parser.parse_args(argv)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(args.dest)], check=True)
    site = next((args.dest / "lib").glob("python3*/site-packages"))
    linked = link_image(args.source.resolve(), site, image_names(args.names))
    print(f"{args.dest}: {len(linked)} distributions of the image linked: {' '.join(linked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
