#!/usr/bin/env bash
# Builds (once) a real llama.cpp `llama-server` and generates (once) tiny random-weight GGUF
# models, all cached under ${OKOME_CACHE:-~/.cache/okome}, so integration tests can put okome in
# front of a REAL engine without downloading any model. The same build also gives a second real
# engine: llama-cpp-python's own OpenAI-compatible Python server (`python -m llama_cpp.server`),
# whose JSON is Python's json.dumps style (`"content": " x"`, spaces after `:` and `,`).
#
#   llama.cpp comes from the pinned llama-cpp-python sdist on PyPI (it vendors llama.cpp under
#   vendor/llama.cpp). ONE cmake build with shared libraries (BUILD_SHARED_LIBS=ON, RPATH
#   $ORIGIN) gives both `llama-server` and the libllama.so / libggml*.so / libmtmd.so that the
#   Python bindings load through ctypes; they are copied into one directory. Portable x86-64-v3
#   flags (GGML_NATIVE=OFF), no OpenSSL, no OpenMP, no web UI. libstdc++/libgcc are linked
#   dynamically: with several shared libraries each would otherwise carry its own copy, and
#   exceptions thrown in libllama and caught in the server need the shared libgcc.
#   The pure-Python package `llama_cpp/` is unpacked from the same sdist; its `lib/` is a symlink
#   to that directory. The Python server's dependencies are pinned in tests/clients/requirements.txt.
#   The models come from tests/engines/make_tiny_gguf.py (fixed seed) run in the test virtualenv
#   made by tests/clients/setup.sh (it needs the pinned `gguf` + `numpy`).
#
# Idempotent: a second run only prints the paths. The last two lines of stdout are
#   LLAMA_SERVER=/abs/path/llama-server
#   LLAMA_MODEL=/abs/path/okome-tiny-<hash>.gguf
# and $OKOME_CACHE/llamacpp.env gets those plus
#   LLAMA_MODEL_SLOW=/abs/path/okome-slow-<hash>.gguf
#   LLAMA_CPP_PYTHON=/abs/dir   (put on PYTHONPATH: it holds the llama_cpp package)
#   LLAMA_CPP_LIB=/abs/dir      (the .so files; LLAMA_CPP_LIB_PATH for llama_cpp, optional)
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
# "-shared": the shared-library build (llama-server + .so files); the older static-only build
# lived in llama-server/$LCP_VERSION/ and is no longer used.
server_dir="$cache/llama-server/$LCP_VERSION-shared"
server_bin="$server_dir/llama-server"
py_dir="$cache/llama-cpp-python/$LCP_VERSION"
models_dir="$cache/models"
log() { echo "llamacpp.sh: $*" >&2; }

sdist="$cache/downloads/llama_cpp_python-$LCP_VERSION.tar.gz"
fetch_sdist() {
  mkdir -p "$cache/downloads"
  if [[ ! -f "$sdist" ]] || ! echo "$LCP_SHA256  $sdist" | sha256sum -c --status; then
    log "downloading llama-cpp-python==$LCP_VERSION sdist from PyPI (~75 MB)"
    local dl
    dl="$(mktemp -d "$cache/downloads/.dl.XXXXXX")"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
      "llama-cpp-python==$LCP_VERSION" -d "$dl"
    mv "$dl/llama_cpp_python-$LCP_VERSION.tar.gz" "$sdist"
    rm -rf "$dl"
    echo "$LCP_SHA256  $sdist" | sha256sum -c --status \
      || { log "sha256 mismatch for $sdist"; rm -f "$sdist"; exit 1; }
  fi
}

# --- llama-server + shared libraries ----------------------------------------------------------
# ready: the binary runs (it finds its libraries through RPATH $ORIGIN) and libllama.so is there
server_ok() { [[ -x "$server_bin" && -e "$server_dir/libllama.so" ]] && "$server_bin" --version >/dev/null 2>&1; }
if [[ -e "$server_bin" ]] && ! server_ok; then
  log "cached $server_dir is incomplete or does not run here; rebuilding"
  rm -f "$server_bin"
fi
if [[ ! -x "$server_bin" ]]; then
  for tool in cmake c++ tar sha256sum; do
    command -v "$tool" >/dev/null || { log "missing '$tool' (apt-get install cmake g++)"; exit 1; }
  done
  fetch_sdist
  mkdir -p "$server_dir"
  work="$(mktemp -d "$server_dir/.build.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "extracting vendor/llama.cpp from $sdist"
  mkdir "$work/src"
  tar -xzf "$sdist" -C "$work/src" --strip-components=3 \
    "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
  rm -f "$work/src/.git"  # a submodule pointer into the sdist author's checkout; build info is pinned
  src="$work/src"
  build="$work/build"
  start=$(date +%s)
  log "configuring and building llama.cpp b$LLAMA_BUILD_NUMBER ($LLAMA_COMMIT), shared libraries," \
    "with -j$JOBS; this takes a while on few cores (log: $server_dir/build.log)"
  {
    echo "# llama-cpp-python $LCP_VERSION, llama.cpp@$LLAMA_COMMIT, $(date -u +%FT%TZ), $(nproc) cpus, -j$JOBS"
    nice -n 10 cmake -S "$src" -B "$build" \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=ON \
      -DCMAKE_INSTALL_RPATH='$ORIGIN' \
      -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON \
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
    # llama-server links llama, ggml*, llama-common and mtmd, so this one target builds every
    # library the Python bindings load (libllama.so; libmtmd.so only for multimodal chat)
    nice -n 10 cmake --build "$build" --target llama-server llama mtmd -j"$JOBS"
  } >"$work/build.log" 2>&1 || { log "build failed, see $server_dir/build.log"; mv -f "$work/build.log" "$server_dir/build.log"; tail -30 "$server_dir/build.log" >&2; exit 1; }
  secs=$(( $(date +%s) - start ))
  echo "# build time: ${secs}s" >>"$work/build.log"
  log "llama-server and shared libraries built in ${secs}s"
  # stage beside the final files, then move the binary last: its presence marks a complete build
  stage="$work/stage"
  mkdir "$stage"
  cp -P "$build"/bin/*.so* "$stage/"
  for f in "$stage"/*.so*; do
    [[ -L "$f" ]] || strip --strip-unneeded "$f" 2>/dev/null || true
  done
  strip -o "$stage/llama-server" "$build/bin/llama-server" 2>/dev/null \
    || cp "$build/bin/llama-server" "$stage/llama-server"
  chmod 755 "$stage/llama-server"
  rm -f "$server_dir"/*.so*
  for f in "$stage"/*.so*; do mv -f "$f" "$server_dir/"; done
  mv -f "$work/build.log" "$server_dir/build.log"
  mv -f "$stage/llama-server" "$server_bin"
  rm -rf "$work"
  trap - EXIT
  server_ok || { log "$server_bin does not run:"; "$server_bin" --version >&2 || true; exit 1; }
fi

# --- llama-cpp-python's pure-Python package (the Python server) --------------------------------
# The sdist's llama_cpp/ as is; its lib/ (where llama_cpp looks for libllama.so by default, and
# _ggml.py / mtmd_cpp.py always) is a symlink to the shared libraries built above.
if [[ ! -f "$py_dir/llama_cpp/server/__main__.py" || "$(readlink "$py_dir/llama_cpp/lib")" != "$server_dir" ]]; then
  fetch_sdist
  mkdir -p "$cache/llama-cpp-python"
  tmpd="$(mktemp -d "$cache/llama-cpp-python/.x.XXXXXX")"
  tar -xzf "$sdist" -C "$tmpd" --strip-components=1 "llama_cpp_python-$LCP_VERSION/llama_cpp"
  chmod 755 "$tmpd"
  rm -rf "$tmpd/llama_cpp/lib"
  ln -s "$server_dir" "$tmpd/llama_cpp/lib"
  rm -rf "$py_dir"
  mv "$tmpd" "$py_dir"
  log "unpacked llama_cpp $LCP_VERSION (Python) into $py_dir"
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

printf 'LLAMA_SERVER=%s\nLLAMA_MODEL=%s\nLLAMA_MODEL_SLOW=%s\nLLAMA_CPP_PYTHON=%s\nLLAMA_CPP_LIB=%s\n' \
  "$server_bin" "$model" "$slow" "$py_dir" "$server_dir" >"$cache/llamacpp.env.tmp"
mv -f "$cache/llamacpp.env.tmp" "$cache/llamacpp.env"
echo "LLAMA_MODEL_SLOW=$slow"
echo "LLAMA_CPP_PYTHON=$py_dir"
echo "LLAMA_CPP_LIB=$server_dir"
echo "LLAMA_SERVER=$server_bin"
echo "LLAMA_MODEL=$model"
