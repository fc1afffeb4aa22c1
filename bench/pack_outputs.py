"""Pack a study run's outputs for the trip back from a device machine, and print its headline.

A device run returns at most 8 files of at most 16 MiB each (64 MiB together), none deeper than
two folders, named in letters, digits, '.', '_' and '-'. :func:`pack` writes groups of files as
``<group>.tar.gz`` at the top of the output folder (split into ``<group>.tar.gz.00``, ``.01``,
... when one archive is too large: rejoin with ``cat <group>.tar.gz.* | tar xz``), keeps the
files already there (a log; one over the size limit keeps its head and tail), and writes
``MANIFEST.txt`` listing every file, its size and sha256, every archive's members, and what was
left out to respect the limits (the largest members of the lowest-priority groups go first).

    python bench/pack_outputs.py pack OUT --group results=results/full,runs/full/timings.json \\
        --group figures=figures/full [--max-files 8] [--max-mib 16] [--max-total-mib 64]
    python bench/pack_outputs.py headline --profile full

Paths of a group are files or folders relative to the repository root (the current folder by
default, ``--root``); missing ones are noted in the manifest, not an error, so a run cut short
still returns what it made.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

MiB = 1 << 20
MANIFEST = "MANIFEST.txt"
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclasses.dataclass
class Limits:
    """What may come back: ``max_files`` files (the manifest included), each at most
    ``max_bytes``, together at most ``max_total``."""

    max_files: int = 8
    max_bytes: int = 16 * MiB
    max_total: int = 64 * MiB


def _members(root: Path, paths: list[str]) -> tuple[list[Path], list[str]]:
    """Files under ``paths`` (relative to ``root``), sorted, and the paths that do not exist."""
    files, missing = [], []
    for p in paths:
        full = root / p
        if full.is_dir():
            files += sorted(f for f in full.rglob("*") if f.is_file() and not f.is_symlink())
        elif full.is_file():
            files.append(full)
        else:
            missing.append(p)
    return files, missing


def _tar_gz(root: Path, files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for f in files:
            tar.add(f, arcname=str(f.relative_to(root)), recursive=False)
    return buf.getvalue()


def _truncate(path: Path, max_bytes: int) -> bool:
    """Keep the head and the tail of a file over ``max_bytes``; True if it was cut."""
    size = path.stat().st_size
    if size <= max_bytes:
        return False
    note = f"\n[... {size} bytes, cut to head and tail by pack_outputs.py ...]\n".encode()
    keep = (max_bytes - len(note)) // 2
    with open(path, "rb") as f:
        head = f.read(keep)
        f.seek(size - keep)
        tail = f.read(keep)
    path.write_bytes(head + note + tail)
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def pack(
    out_dir: str | Path,
    groups: list[tuple[str, list[str]]],
    *,
    root: str | Path = ".",
    limits: Limits | None = None,
) -> list[Path]:
    """Write ``groups`` (``(name, paths)`` in priority order) as archives into ``out_dir``.

    Files already in ``out_dir`` count against the limits (cut to head and tail when over the
    size limit); folders in it are an error (nothing there may be deeper than the top).

    Returns:
        the files of ``out_dir`` after packing (archives, kept files and ``MANIFEST.txt``);
        they respect ``limits`` whatever the inputs.

    Raises:
        ValueError: a bad group name, a folder or a badly named file in ``out_dir``, or limits
            that leave no room for the manifest.
    """
    lim = limits or Limits()
    out, root = Path(out_dir), Path(root)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    existing = sorted(p for p in out.iterdir() if p.name != MANIFEST)
    for p in existing:
        if not p.is_file() or p.is_symlink():
            raise ValueError(f"pack: {p} is not a plain file (only top-level files come back)")
        if not _NAME_RE.match(p.name):
            raise ValueError(f"pack: {p.name!r} is not named in letters, digits, '.', '_', '-'")
        if _truncate(p, lim.max_bytes):
            lines.append(f"cut to {lim.max_bytes} bytes (head and tail): {p.name}")
    reserve = min(64 * 1024, lim.max_bytes)  # room for the manifest itself
    slots = lim.max_files - len(existing) - 1
    budget = lim.max_total - sum(p.stat().st_size for p in existing) - reserve
    if slots < 0 or budget < 0:
        raise ValueError(f"pack: {len(existing)} files already in {out} leave no room ({lim})")
    archives: list[tuple[str, list[Path]]] = []
    for name, paths in groups:
        if not _NAME_RE.match(name) or name == MANIFEST:
            raise ValueError(f"pack: bad group name {name!r}")
        files, missing = _members(root, paths)
        for m in missing:
            lines.append(f"missing (not made by the run): {m}")
        dropped: list[Path] = []
        while files:
            blob = _tar_gz(root, files)
            n_parts = -(-len(blob) // lim.max_bytes)
            if n_parts <= slots and len(blob) <= budget:
                break
            largest = max(files, key=lambda f: (f.stat().st_size, str(f)))
            files.remove(largest)
            dropped.append(largest)
        for d in dropped:
            lines.append(f"left out (limits): {d.relative_to(root)} ({d.stat().st_size} bytes)")
        if not files:
            continue
        parts = [blob[i : i + lim.max_bytes] for i in range(0, len(blob), lim.max_bytes)]
        target = f"{name}.tar.gz"
        if len(parts) == 1:
            (out / target).write_bytes(parts[0])
        else:
            for i, part in enumerate(parts):
                (out / f"{target}.{i:02d}").write_bytes(part)
            lines.append(f"split: cat {target}.* | tar xz")
        slots -= len(parts)
        budget -= len(blob)
        archives.append((target, files))
    body = ["files:"]
    for p in sorted(out.iterdir()):
        if p.name != MANIFEST:
            body.append(f"  {p.name}  {p.stat().st_size} bytes  sha256 {_sha256(p)}")
    for target, files in archives:
        body.append(f"{target}: {len(files)} files")
        body += [f"  {f.relative_to(root)}" for f in files]
    text = "\n".join(body + lines) + "\n"
    if len(text.encode()) > reserve:  # a huge member list: keep the summary lines
        text = "\n".join(body[: 1 + lim.max_files] + lines)[: reserve - 100] + "\n[... cut]\n"
    (out / MANIFEST).write_text(text)
    return sorted(out.iterdir())


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def headline(profile: str, root: str | Path = ".") -> str:
    """The run's headline: seconds per notebook and stage, field PSNR, per-model test accuracy,
    and whether each budget ended with the validation still improving. Missing results (a run
    cut short) are said, not an error."""
    root = Path(root)
    res = root / "results" / profile
    out = [f"== headline of profile {profile!r}"]
    timings = _read(root / "runs" / profile / "timings.json") or {}
    out.append("seconds per notebook: " + (json.dumps(timings) if timings else "none recorded"))
    if timings:
        out.append(f"notebooks together: {sum(timings.values()):.1f} s")
    r06 = _read(res / "06_results.json")
    if r06:
        out.append(f"devices: {r06.get('jax_devices')}")
    r01 = _read(res / "01_lensing_data.json")
    if r01:
        out.append(f"data: {r01.get('n_images')} images, generated in "
                   f"{r01.get('generation_seconds', 0):.1f} s "
                   f"({r01.get('sim_images_per_second', 0):.0f} images/s)")  # fmt: skip
    r03 = _read(res / "03_meta_learning.json")
    if r03:
        for kind, p in r03.get("psnr_db", {}).items():
            steps = r03["outer_steps"][kind]
            out.append(
                f"{kind}: val PSNR {p['val_clean']:.2f} dB vs noise-free, {p['val_noisy']:.2f} dB"
                f" vs noisy, per inner step {[round(v, 2) for v in p['per_inner_step_clean']]};"
                f" {steps} outer steps in {r03['train_seconds'][kind]:.1f} s, encoding "
                f"{r03['encode_seconds'][kind]:.1f} s"
            )
        out.append(f"noise floor {r03.get('noise_floor_psnr_db', float('nan')):.2f} dB")
    else:
        out.append("03_meta_learning: no results")
    r05 = _read(res / "05_classifiers.json")
    if r05:
        out.append("model             test acc   AUC      rotated  steps  best   stop      train s")
        for name, m in r05["models"].items():
            rot = m.get("rotated_accuracy")
            still = " (still improving at the end)" if m["best_step"] == m["steps"] else ""
            out.append(
                f"{name:17s} {100 * m['accuracy']:7.2f} %  {m['auc_macro']:.5f}  "
                f"{'-' if rot is None else f'{100 * rot:5.1f} %'}  {m['steps']:5d}  "
                f"{m['best_step']:5d}  {m['stop_reason']:8s} {m['train_seconds']:7.1f}{still}"
            )
    else:
        out.append("05_classifiers: no results")
    if r06 and r06.get("data_efficiency"):
        for name, points in r06["data_efficiency"].items():
            acc = ", ".join(f"{p['fraction']:.0%}: {100 * p['accuracy']:.1f} %" for p in points)
            out.append(f"data efficiency {name}: {acc}")
    try:
        sys.path.insert(0, str(root / "lib"))
        from enflens.study.report import PUBLISHED_ANCHORS

        for a in PUBLISHED_ANCHORS[:2]:
            out.append(f"published anchor: {a['model']} {a['accuracy']} % AUC {a['auc_macro']}"
                       f" ({a['source']})")  # fmt: skip
    except ImportError:
        pass
    return "\n".join(out)


def _parse_group(text: str) -> tuple[str, list[str]]:
    name, _, paths = text.partition("=")
    if not paths:
        raise argparse.ArgumentTypeError(f"--group must be NAME=PATH[,PATH...], got {text!r}")
    return name, [p for p in paths.split(",") if p]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/pack_outputs.py", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack groups of files into OUT")
    p.add_argument("out", type=Path)
    p.add_argument("--group", type=_parse_group, action="append", default=[])
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--max-files", type=int, default=8)
    p.add_argument("--max-mib", type=float, default=16)
    p.add_argument("--max-total-mib", type=float, default=64)
    h = sub.add_parser("headline", help="print the run's headline numbers")
    h.add_argument("--profile", required=True)
    h.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    if args.cmd == "headline":
        print(headline(args.profile, args.root))
        return 0
    limits = Limits(args.max_files, int(args.max_mib * MiB), int(args.max_total_mib * MiB))
    files = pack(args.out, args.group, root=args.root, limits=limits)
    for f in files:
        print(f"{f.stat().st_size:>10d}  {f}")
    print((args.out / MANIFEST).read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
