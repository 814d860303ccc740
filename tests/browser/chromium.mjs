// How the browser tests launch the system Chromium (/usr/bin/chromium, or
// CHROMIUM_BIN) with playwright-core: shared by tests/browser and
// clients/js/test/browser. Playwright's own browser download is never used.

export const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";

// Without the background-networking flags Chromium tries to reach Google
// services and, on a closed network, its connections get refused. Playwright
// itself gives every launch() a fresh temporary --user-data-dir (and refuses
// one in `args`).
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // Containers often have a 64 MB /dev/shm; Debian's launcher only adds this
  // when it can measure that, which fails with several matching mounts.
  "--disable-dev-shm-usage",
];
