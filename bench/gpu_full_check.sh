#!/usr/bin/env bash
# bench/gpu_full_check.sh: rehearse bench/gpu_full.sh on this CPU machine, as the GPU machine will
# run it: in a fresh copy of the working tree (tracked and untracked-not-ignored files, as a
# device call sends it, plus .whl), with a Python that sees only the GPU image's packages
# (bench/gpu_emulate.py) and the carried wheels, with the smoke-sized profile full_check (the
# full profile's keys). Then checks what came back: at most 8 files of at most 16 MiB, named as a
# device run needs, the archives whole, every notebook's results there.
#
# The wheels for this Python come from bench/fetch_wheels.sh with WHEEL_PYTHON set to this
# machine's version: the same pinned versions as .whl/ (the pure-Python ones are the same files;
# the compiled ones carry this Python's tag).
# Env: SOURCE_VENV (the venv whose packages stand in for the image's, default .venv),
#      CHECK_DIR (/tmp/enflens-gpu-check).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
SOURCE_VENV=${SOURCE_VENV:-.venv}
CHECK=${CHECK_DIR:-/tmp/enflens-gpu-check}
PY=$SOURCE_VENV/bin/python
PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
rm -rf "$CHECK/repo" "$CHECK/out"
mkdir -p "$CHECK"

# wheels of the pinned versions for this Python
PYTHON=$PY WHEEL_PYTHON=$PYVER WHEEL_DIR=$CHECK/wheels bench/fetch_wheels.sh
# the image: only its packages, from the source venv
"$PY" bench/gpu_emulate.py "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" "$CHECK/image"
# the working tree as a device call sends it
mkdir -p "$CHECK/repo"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$CHECK/repo"
cp -r "$CHECK/wheels" "$CHECK/repo/.whl"

for copy in repo-short repo-nogpu; do  # untouched copies for the two short runs below
    rm -rf "${CHECK:?}/$copy" "$CHECK/out-${copy#repo-}"
    cp -a "$CHECK/repo" "$CHECK/$copy"
done
cd "$CHECK/repo"
start=$SECONDS
set +e
ENFLENS_RUN_PROFILE=full_check PYTHON="$CHECK/image/bin/python" bash bench/gpu_full.sh "$CHECK/out"
rc=$?
set -e
echo "gpu_full.sh (full_check) exited $rc after $((SECONDS - start)) s"

# the deadline path: the pipeline is stopped mid-way and what it made is packed
cd "$CHECK/repo-short"
start=$SECONDS
set +e
ENFLENS_RUN_PROFILE=full_check GPU_FULL_DEADLINE_S=70 PACK_RESERVE_S=20 \
    PYTHON="$CHECK/image/bin/python" bash bench/gpu_full.sh "$CHECK/out-short" > "$CHECK/short.log" 2>&1
short_rc=$?
set -e
tail -4 "$CHECK/short.log"
echo "deadline run exited $short_rc after $((SECONDS - start)) s (expected 124)"
[[ $short_rc == 124 ]] || { echo "error: the deadline run should exit 124" >&2; exit 1; }
grep -q "no results" "$CHECK/out-short/headline.txt"  # the notebooks it did not reach

# the full profile without a GPU: refused after the checks, the log still comes back
cd "$CHECK/repo-nogpu"
set +e
ENFLENS_RUN_PROFILE=full PYTHON="$CHECK/image/bin/python" bash bench/gpu_full.sh "$CHECK/out-nogpu" > "$CHECK/nogpu.log" 2>&1
nogpu_rc=$?
set -e
grep "no GPU" "$CHECK/nogpu.log"
[[ $nogpu_rc != 0 && -f "$CHECK/out-nogpu/gpu_full.log" ]] || { echo "error: full without GPU" >&2; exit 1; }
echo "full profile without a GPU: refused (rc $nogpu_rc), log packed"

"$PY" - "$CHECK/out" "$CHECK/out-short" "$CHECK/out-nogpu" <<'PYEOF'
import re, sys, tarfile, io
from pathlib import Path
for extra in sys.argv[2:]:  # within the limits too
    fs = list(Path(extra).iterdir())
    assert len(fs) <= 8 and all(f.is_file() and f.stat().st_size <= 16 << 20 for f in fs), fs
    print(extra, sorted(f.name for f in fs))
out = Path(sys.argv[1])
files = sorted(out.iterdir())
assert all(f.is_file() for f in files), "folders in OUT"
assert len(files) <= 8, f"{len(files)} files"
for f in files:
    assert f.stat().st_size <= 16 << 20, f"{f.name} is {f.stat().st_size} bytes"
    assert re.fullmatch(r"[A-Za-z0-9._-]+", f.name), f.name
assert sum(f.stat().st_size for f in files) <= 64 << 20
names = {}
for stem in sorted({re.sub(r"\.tar\.gz(\.\d\d)?$", "", f.name) for f in files if ".tar.gz" in f.name}):
    blob = b"".join(p.read_bytes() for p in sorted(out.glob(f"{stem}.tar.gz*")))
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        names[stem] = tar.getnames()
results = {Path(n).name for n in names.get("results", [])}
want = {f"0{i}_{s}.json" for i, s in [(1, "lensing_data"), (2, "enf_theory"), (3, "meta_learning"),
        (4, "latent_visualization"), (5, "classifiers"), (6, "results")]} | {"metrics.json"}
assert want <= results, f"missing results {want - results}"
nbs = [n for n in names.get("notebooks", []) if n.endswith(".ipynb")]
assert len(nbs) == 6, nbs
for f in files:
    print(f"{f.stat().st_size:>10d}  {f.name}")
print({k: len(v) for k, v in names.items()}, "members; all checks passed")
PYEOF
exit $rc
