# Sourced by scripts/test: makes sure the browser test has Debian's headless Chromium.
# It installs it with apt-get where it can (as root, with apt-get present); elsewhere the
# browser test is skipped, and scripts/test says so after the summary.
CHROMIUM=/usr/bin/chromium
if [ ! -x "$CHROMIUM" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's chromium for the browser test ..." >&2
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      >/tmp/toystore-chromium-install.log 2>&1; then
    echo "warning: chromium could not be installed (see /tmp/toystore-chromium-install.log)" >&2
  fi
fi
