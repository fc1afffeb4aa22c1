#!/usr/bin/env bash
# bench/fetch_wheels.sh: download the wheels the GPU image lacks (bench/gpu_wheels.txt, pinned, one
# version each) into .whl/ (git-ignored), for bench/gpu_full.sh on a machine without a registry.
#
#   bench/fetch_wheels.sh                                  # CPython 3.12, manylinux x86-64 -> .whl/
#   WHEEL_PYTHON=3.11 WHEEL_DIR=/tmp/w bench/fetch_wheels.sh   # same versions for this machine's
#                                                          # Python (the CPU rehearsal)
# Pure-Python wheels are the same for both; the compiled ones (pyzmq, rpds-py here) differ by tag.
# A package published only as a source distribution (lenstronomy) is built here into a wheel,
# which must come out pure Python (py3-none-any), or the script fails.
# Env: PYTHON (the pip to use, default python3), WHEEL_PYTHON (3.12), WHEEL_DIR (.whl),
#      WHEEL_MAX_MIB (40: fail above it; a device call carries at most 64 MiB with the tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${WHEEL_PYTHON:-3.12}
DEST=${WHEEL_DIR:-.whl}
MAX_MIB=${WHEEL_MAX_MIB:-40}
LIST=bench/gpu_wheels.txt

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: a second one stops the whole install
mapfile -t PINS < <(grep -v '^\s*#' "$LIST" | grep -v '^\s*$')
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
built=()
for pin in "${PINS[@]}"; do
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
            --implementation cp "${platforms[@]}" -d "$DEST" "$pin" >/dev/null 2>&1; then
        # no wheel on the index: build one from the source distribution (must be pure Python)
        tmp=$(mktemp -d)
        "$PY" -m pip wheel -q --no-deps -w "$tmp" "$pin" >/dev/null
        whl=$(ls "$tmp"/*.whl)
        case "$(basename "$whl")" in
            *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$whl" "$DEST"/ ;;
            *) echo "error: $pin built into $(basename "$whl"), not a pure-Python wheel" >&2; exit 1 ;;
        esac
        rm -rf "$tmp"
        built+=("$pin")
    fi
done

# every pin exactly once, nothing else
"$PY" - "$DEST" "${PINS[@]}" <<'EOF'
import re, sys
from pathlib import Path
dest, pins = Path(sys.argv[1]), sys.argv[2:]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
have = {}
for w in sorted(dest.glob("*.whl")):
    name, version = w.name.split("-")[:2]
    have.setdefault(norm(name), []).append(version)
want = {norm(p.split("==")[0]): p.split("==")[1] for p in pins}
bad = [f"{n}: {v}" for n, v in have.items() if n not in want or v != [want[n]]]
missing = sorted(set(want) - set(have))
if bad or missing:
    sys.exit(f"error: wheels in {dest} do not match the pins: extra/wrong {bad}, missing {missing}")
EOF
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "$(ls "$DEST"/*.whl | wc -l) wheels for CPython $PYVER in $DEST: $((total / 1024)) KiB" \
     "(built from source: ${built[*]:-none})"
ls "$DEST" | grep -v -- '-none-any\.whl$' | sed 's/^/  compiled: /' || true
if (( total > MAX_MIB * 1024 * 1024 )); then
    echo "error: the wheels take more than $MAX_MIB MiB" >&2
    exit 1
fi
