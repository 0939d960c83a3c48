#!/usr/bin/env bash
# Builds (once) a real llama.cpp `llama-server` and generates (once) a tiny random-weight GGUF
# model, both cached under ${OKOME_CACHE:-~/.cache/okome}, so integration tests can put okome in
# front of a REAL engine without downloading any model.
#
#   llama.cpp comes from the pinned llama-cpp-python sdist on PyPI (it vendors llama.cpp under
#   vendor/llama.cpp); only the `llama-server` target is built, with static llama/ggml libraries
#   and static libstdc++/libgcc (the binary needs only glibc), portable x86-64-v3 flags
#   (GGML_NATIVE=OFF), no OpenSSL, no OpenMP, no web UI.
#   The model comes from tests/engines/make_tiny_gguf.py (fixed seed) run in the test virtualenv
#   made by tests/clients/setup.sh (it needs the pinned `gguf` + `numpy`).
#
# Idempotent: a second run only prints the paths. The last two lines of stdout are
#   LLAMA_SERVER=/abs/path/llama-server
#   LLAMA_MODEL=/abs/path/okome-tiny-<hash>.gguf
# and the same two lines are written to $OKOME_CACHE/llamacpp.env.
set -euo pipefail

# --- pins -----------------------------------------------------------------------------------
LCP_VERSION="0.3.36"   # llama-cpp-python sdist version (the cache key)
LCP_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# What that sdist vendors (its CHANGELOG: "update llama.cpp to ggml-org/llama.cpp@0c1e57098").
# The sdist has no .git, so the build info is passed explicitly: commit
# 0c1e57098bba43ac29e6e3b677cdceebdd22334f is llama.cpp release tag b11312.
LLAMA_COMMIT="0c1e57098"
LLAMA_BUILD_NUMBER="11312"
JOBS="${OKOME_BUILD_JOBS:-2}"

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${OKOME_CACHE:-$HOME/.cache/okome}"
server_dir="$cache/llama-server/$LCP_VERSION"
server_bin="$server_dir/llama-server"
models_dir="$cache/models"
log() { echo "llamacpp.sh: $*" >&2; }

# --- llama-server -----------------------------------------------------------------------------
if [[ -x "$server_bin" ]] && ! "$server_bin" --version >/dev/null 2>&1; then
  log "cached $server_bin does not run here; rebuilding"
  rm -f "$server_bin"
fi
if [[ ! -x "$server_bin" ]]; then
  for tool in cmake c++ tar sha256sum; do
    command -v "$tool" >/dev/null || { log "missing '$tool' (apt-get install cmake g++)"; exit 1; }
  done
  mkdir -p "$cache/downloads" "$server_dir"
  sdist="$cache/downloads/llama_cpp_python-$LCP_VERSION.tar.gz"
  if [[ ! -f "$sdist" ]] || ! echo "$LCP_SHA256  $sdist" | sha256sum -c --status; then
    log "downloading llama-cpp-python==$LCP_VERSION sdist from PyPI (~75 MB)"
    dl="$(mktemp -d "$cache/downloads/.dl.XXXXXX")"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
      "llama-cpp-python==$LCP_VERSION" -d "$dl"
    mv "$dl/llama_cpp_python-$LCP_VERSION.tar.gz" "$sdist"
    rm -rf "$dl"
    echo "$LCP_SHA256  $sdist" | sha256sum -c --status \
      || { log "sha256 mismatch for $sdist"; rm -f "$sdist"; exit 1; }
  fi

  work="$(mktemp -d "$server_dir/.build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "extracting vendor/llama.cpp from $sdist"
  tar -xzf "$sdist" -C "$work" --strip-components=3 \
    "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
  rm -f "$work/.git"  # a submodule pointer into the sdist author's checkout; build info is pinned
  src="$work"
  build="$work/build"
  start=$(date +%s)
  log "configuring and building llama.cpp b$LLAMA_BUILD_NUMBER ($LLAMA_COMMIT) with -j$JOBS;" \
    "this takes a while on few cores (log: $server_dir/build.log)"
  {
    echo "# llama-cpp-python $LCP_VERSION, llama.cpp@$LLAMA_COMMIT, $(date -u +%FT%TZ), $(nproc) cpus, -j$JOBS"
    nice -n 10 cmake -S "$src" -B "$build" \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF \
      -DCMAKE_EXE_LINKER_FLAGS="-static-libgcc -static-libstdc++" \
      -DGGML_NATIVE=OFF \
      -DGGML_OPENMP=OFF \
      -DGGML_CCACHE=OFF \
      -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_TOOLS=ON \
      -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_BUILD_APP=OFF \
      -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_COMMIT="$LLAMA_COMMIT" \
      -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD_NUMBER"
    nice -n 10 cmake --build "$build" --target llama-server -j"$JOBS"
  } >"$server_dir/build.log" 2>&1 || { log "build failed, see $server_dir/build.log"; tail -30 "$server_dir/build.log" >&2; exit 1; }
  secs=$(( $(date +%s) - start ))
  echo "# build time: ${secs}s" >>"$server_dir/build.log"
  log "llama-server built in ${secs}s"
  strip -o "$work/llama-server.tmp" "$build/bin/llama-server" 2>/dev/null \
    || cp "$build/bin/llama-server" "$work/llama-server.tmp"
  chmod 755 "$work/llama-server.tmp"
  mv -f "$work/llama-server.tmp" "$server_bin"
  rm -rf "$work"
  trap - EXIT
fi

# --- models -----------------------------------------------------------------------------------
# okome-tiny (thousands of tokens/s on one thread) and okome-slow (the same vocabulary and
# template, wide enough for ~75 tokens/s on one thread here), so a test can act mid-stream:
# drop the client, kill the engine, watch the queue.
gen="$here/make_tiny_gguf.py"
model_hash="$(sha256sum "$gen" | cut -c1-12)"
make_model() { # NAME [make_tiny_gguf.py size flags]
  local name="$1"; shift
  local out="$models_dir/$name-$model_hash.gguf"
  if [[ ! -s "$out" ]]; then
    bash "$repo/tests/clients/setup.sh" >&2
    local py="${OKOME_PYENV:-$HOME/.cache/okome/pyenv}/bin/python"
    mkdir -p "$models_dir"
    local tmp
    tmp="$(mktemp "$models_dir/.$name.XXXXXX")"
    log "generating $out"
    "$py" "$gen" "$tmp" "$@" >&2 || { rm -f "$tmp"; exit 1; }
    chmod 644 "$tmp"
    mv -f "$tmp" "$out"
  fi
  echo "$out"
}
model="$(make_model okome-tiny)"
slow="$(make_model okome-slow --n-embd 1024 --n-layer 8 --n-ff 2048)"

printf 'LLAMA_SERVER=%s\nLLAMA_MODEL=%s\nLLAMA_MODEL_SLOW=%s\n' "$server_bin" "$model" "$slow" >"$cache/llamacpp.env"
echo "LLAMA_MODEL_SLOW=$slow"
echo "LLAMA_SERVER=$server_bin"
echo "LLAMA_MODEL=$model"
