#!/usr/bin/env bash
# A plain (non-editable) wheel install must work from any directory: build the wheel, install it into a fresh venv
# that borrows the already-installed dependencies, and run the command from outside the source tree.
set -euo pipefail
PY=${1:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m build --wheel --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
python3 -m venv "$WORK/venv"
# Dependencies come from the dev venv's site-packages (a plain path entry: its .pth files, including the editable
# clipneg finder, are not processed), so only the wheel's own clipneg is importable as clipneg.
DEPS=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
SITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$DEPS" > "$SITE/zz_clipneg_deps.pth"
"$WORK/venv/bin/pip" install --quiet --no-deps "$WORK"/dist/clipneg-*.whl
cd "$WORK"
"$WORK/venv/bin/python" - <<'PY'
import importlib, importlib.util, sys
import clipneg, clipneg.eval, clipneg.generators, clipneg.world
site = sys.prefix
for mod in (clipneg, clipneg.eval, clipneg.generators, clipneg.world):
    assert mod.__file__.startswith(site), f"{mod.__name__} imported from {mod.__file__}, not the wheel install"
for generic in ("eval", "generators"):
    spec = importlib.util.find_spec(generic)
    assert spec is None or not (spec.origin or "").startswith(site), f"wheel installed a top-level {generic!r}"
print("wheel install ok:", clipneg.__file__)
PY
"$WORK/venv/bin/clipneg" --help >/dev/null
"$WORK/venv/bin/clipneg" inspect --help >/dev/null
"$WORK/venv/bin/clipneg" world --out "$WORK/world" --n-train 40 --n-test 20 --image-size 32 --shard-size 20 \
  --no-progress >/dev/null
"$WORK/venv/bin/clipneg" inspect "$WORK/world/shards" --html "$WORK/g.html" >/dev/null
test -s "$WORK/g.html"
echo "wheel check: passed"
