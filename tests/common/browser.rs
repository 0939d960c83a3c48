//! Headless Chromium for the browser tests (Debian's `chromium`; `.ci/run` installs it).

use std::path::PathBuf;

/// The Chromium binary on `PATH` (or in `/usr/bin`); panics with how to install it.
pub fn chromium() -> PathBuf {
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ];
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/bin".into()])
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no chromium on PATH: install Debian's `chromium` package \
                 (apt-get install -y chromium), as .ci/run does"
            )
        })
}
