#!/usr/bin/env bash
# The project's two entry points, usable on a fresh Debian machine (run as root or with sudo):
#   ./build.sh run    install what is missing, build, and run the main job
#   ./build.sh test   install what is missing, then run every test: clippy, the native
#                     GPU tests (lavapipe where there is no GPU), and the browser tests
#                     in headless Chromium (WebGPU on SwiftShader)
set -euo pipefail
cd "$(dirname "$0")"

WASM_BINDGEN_VERSION=0.2.130   # must equal the wasm-bindgen pinned in crate/Cargo.toml
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
}

run_main() {
    cargo run --release -p webdiffusion -- info
}

run_tests() {
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy -p webdiffusion --target wasm32-unknown-unknown --lib --test web -- -D warnings
    cargo test --workspace
    (
        cd crate
        CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_TIMEOUT=600 \
            cargo test --target wasm32-unknown-unknown --test web
    )
}

case "${1:-}" in
    run) setup; run_main ;;
    test) setup; run_tests ;;
    *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac
