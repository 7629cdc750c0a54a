#!/bin/sh
# Build (on the controller) a wheelhouse holding this project and every dependency, so the
# hosts install with pip --no-index. Offline first (reuses wheels already there); falls back to
# the package index only for what is missing. The project wheel is reproducible
# (SOURCE_DATE_EPOCH), so an unchanged source gives a byte-identical wheel.
# Usage: build-wheelhouse.sh PYTHON PROJECT_DIR WHEELHOUSE
# Also packs the project wheel and its dependencies (not the build's) as WHEELHOUSE.tar
# (reproducible: sorted, fixed mtimes and owners), so hosts get one file to compare and copy.
# Prints one JSON line: {"wheel": <project wheel file>, "digest": <sha256 over the packed wheels>,
# "tar": <path of the tar>}.
set -eu
py=$1 src=$2 wh=$3
mkdir -p "$wh"
export SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1
build=$(mktemp -d)
trap 'rm -rf "$build" "$build.src.tar"' EXIT
# Build from a copy so nothing (build/, *.egg-info) is written into the source tree.
tar -C "$src" --exclude=./.venv --exclude=./.git --exclude=./reports --exclude=./build \
    --exclude=./inventory/lab --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.pytest_cache \
    --exclude=./.hypothesis --exclude='*.so' --exclude=./loadgen/agent/_echoloop.c --sort=name --mtime=@0 --owner=0 --group=0 \
    --numeric-owner -cf "$build.src.tar" .
tar -C "$build" -xf "$build.src.tar"
# The same source (content digest) as the last build: its wheel is reused (building it compiles the C closed
# loop, ~20 s of the controller's CPU per playbook run and play)
source=$(sha256sum < "$build.src.tar" | cut -d' ' -f1)
rm -f "$build.src.tar"
name=$("$py" -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1]+"/pyproject.toml","rb"))["project"]["name"])' "$build")
ver=$("$py" -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1]+"/pyproject.toml","rb"))["project"]["version"])' "$build")
if [ "$(cat "$wh/.source-digest" 2>/dev/null)" != "$source" ] || \
   ! ls "$wh/$(echo "$name" | tr - _)-$ver"-*.whl >/dev/null 2>&1; then
  if ! "$py" -m pip wheel -q --no-index --find-links "$wh" --wheel-dir "$wh" "$build" >/dev/null 2>&1; then
    "$py" -m pip download -q --dest "$wh" setuptools wheel cython >&2  # build requirements, for the next offline build
    "$py" -m pip wheel -q --find-links "$wh" --wheel-dir "$wh" "$build" >&2
  fi
  echo "$source" > "$wh/.source-digest"
fi
wheel=$(cd "$wh" && ls "$(echo "$name" | tr - _)-$ver"-*.whl | head -n1)
# The hosts get the project wheel and what it needs, nothing else: the wheelhouse also keeps the build's own
# requirements (cython, setuptools) and wheels earlier builds needed. pip resolves the closure offline.
"$py" -m pip wheel -q --no-index --find-links "$wh" --wheel-dir "$build/closure" "$wh/$wheel" >&2
digest=$(cd "$build/closure" && sha256sum ./*.whl | sort -k2 | sha256sum | cut -d' ' -f1)
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$build/closure" -cf "$build.tar" \
    $(cd "$build/closure" && ls ./*.whl)
if ! cmp -s "$build.tar" "$wh.tar"; then mv "$build.tar" "$wh.tar"; else rm -f "$build.tar"; fi
printf '{"wheel": "%s", "digest": "%s", "tar": "%s"}\n' "$wheel" "$digest" "$wh.tar"
