#!/usr/bin/env bash
# Vendors Swagger UI's built assets (npm package swagger-ui-dist, pinned below) into
# static/vendor/swagger-ui/, which /api/v1/docs serves: no CDN, nothing fetched at run time.
# Run it to move to another version; tests/dashboard/test_api_docs.py holds the files to SHA256SUMS.
set -euo pipefail
VERSION=5.36.0
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/static/vendor/swagger-ui"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null && tar xzf "swagger-ui-dist-$VERSION.tgz")
mkdir -p "$DEST"
for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do
  cp "$WORK/package/$f" "$DEST/$f"
done
echo "$VERSION" > "$DEST/VERSION"
(cd "$DEST" && sha256sum swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE > SHA256SUMS)
echo "swagger-ui-dist $VERSION vendored into static/vendor/swagger-ui"
