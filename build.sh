#!/usr/bin/env bash
# The project's two entry points, usable on a fresh Debian machine (run as root or with sudo):
#   ./build.sh run    install what is missing, build, and run the main job
#   ./build.sh test   install what is missing, then run every test: clippy, the native
#                     GPU tests (lavapipe where there is no GPU), and the browser tests
#                     in headless Chromium (WebGPU on SwiftShader), then each fuzz target
#                     for a bounded time
set -euo pipefail
cd "$(dirname "$0")"

WASM_BINDGEN_VERSION=0.2.130   # must equal the wasm-bindgen pinned in crate/web/Cargo.toml
CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=60                # per fuzz target
APT_PACKAGES=(mesa-vulkan-drivers libvulkan1 chromium chromium-driver)

sudo_if_needed() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

setup() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        sudo_if_needed apt-get update -qq
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
    if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
        # Not --locked: the CLI's lockfile pins a crate version this registry does not serve.
        cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
    fi
    if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
    fi
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
}

# The page in web/dist: the library as WebAssembly with its bindings (web/pkg, the npm package), the
# TypeScript compiled, and the embedded model copied beside them.
build_page() {
    local wasm="${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/webdiffusion_web.wasm"
    cargo build --release --target wasm32-unknown-unknown -p webdiffusion-web --lib
    # Named after the npm package, not the crate: web/pkg/webdiffusion.js and webdiffusion_bg.wasm.
    wasm-bindgen --target web --out-dir web/pkg --out-name webdiffusion "$wasm"
    # web/pkg is also the npm package: its manifest and README beside the bindings.
    cp web/npm/package.json web/npm/README.md web/pkg/
    (cd web && npx tsc -p .)
    rm -rf web/dist/pkg web/dist/models
    mkdir -p web/dist/models
    cp web/index.html web/dist/
    cp -r web/pkg web/dist/pkg
    cp -r models/embedded-lcm web/dist/models/
    echo "web/dist: $(du -sh web/dist | cut -f1); webdiffusion_bg.wasm $(stat -c %s web/pkg/webdiffusion_bg.wasm) bytes"
}

run_main() {
    build_page
    echo "Open http://localhost:8080/ in a browser with WebGPU (Chrome or Edge 113+); Ctrl-C stops the server."
    exec node web/serve.mjs web/dist --port 8080
}

# The parsers of untrusted bytes (package manifests, safetensors checkpoints and LoRAs)
# under libFuzzer for a bounded time each; any crash fails the run. cargo-fuzz needs
# nightly flags: RUSTC_BOOTSTRAP lets the stable toolchain, the only one here, accept them.
run_fuzz() {
    (
        cd crate
        mkdir -p fuzz/corpus/manifest fuzz/corpus/safetensors
        RUSTC_BOOTSTRAP=1 cargo fuzz run manifest fuzz/corpus/manifest fuzz/seeds/manifest -- \
            -max_total_time="$FUZZ_SECONDS" -max_len=131072
        RUSTC_BOOTSTRAP=1 cargo fuzz run safetensors fuzz/corpus/safetensors ../tests/fixtures/lora -- \
            -max_total_time="$FUZZ_SECONDS"
    )
}

run_tests() {
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy -p webdiffusion -p webdiffusion-web --target wasm32-unknown-unknown --lib --test web --test web_package -- -D warnings
    cargo test --workspace
    (
        cd crate/web
        CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=600 \
            cargo test --target wasm32-unknown-unknown --test web --test web_package
    )
    build_page; node --test tests/page/
    run_fuzz
}

case "${1:-}" in
    run) setup; run_main ;;
    test) setup; run_tests ;;
    *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac
