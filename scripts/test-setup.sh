#!/usr/bin/env bash
# Install the non-Python parts the tests start: npm packages (SES v2 emulator,
# miniflare) and, when missing, Debian's Chromium, poppler (pdftoppm), php-cli (real PHP serialize()
# output for the IOMAD headers reader's tests; Moodle's mailer, PHPMailer, for SMTP submission's) and
# libphp-phpmailer, and the certificate fonts (Noto for Latin, Greek,
# Cyrillic and the scripts of Arabic, Hebrew, India, Thailand...; Droid Sans Fallback and WenQuanYi
# Micro Hei for Chinese, Japanese and Korean).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x tests/node/node_modules/.bin/aws-ses-v2-local ] || [ ! -x tests/node/node_modules/.bin/miniflare ]; then
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || missing+=(poppler-utils)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
[ -f /usr/share/php/libphp-phpmailer/autoload.php ] || missing+=(libphp-phpmailer)
for fonts in fonts-noto-core fonts-droid-fallback fonts-wqy-microhei fonts-dejavu-core; do
  dpkg-query -W -f='${Status}' "$fonts" 2>/dev/null | grep -q "ok installed" || missing+=("$fonts")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} not installed; the tests that need them will be skipped" >&2
  fi
fi
