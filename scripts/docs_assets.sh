#!/usr/bin/env bash
# Fetch the pinned Swagger UI release from the npm registry and copy the few built files
# /api/v3/docs serves into projecthub/api/static/ (shipped in the package: the docs page
# works offline, no CDN).  Re-run after changing VERSION/SHA256; commit the result.
set -euo pipefail
VERSION=5.35.0
# sha256 of the npm tarball swagger-ui-dist-$VERSION.tgz (npm versions are immutable)
SHA256=1b8e891893404ea4c3558b6a87e2a3e494e7eedba41168c2ece5800a391a6ea6
FILES=(swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE)

cd "$(dirname "$0")/.."
dest=projecthub/api/static
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null)
tarball="$work/swagger-ui-dist-$VERSION.tgz"
echo "$SHA256  $tarball" | sha256sum -c --quiet -
tar -xzf "$tarball" -C "$work"
mkdir -p "$dest"
for f in "${FILES[@]}"; do
  install -m 0644 "$work/package/$f" "$dest/swagger-ui-$f"
done
# the bundle and stylesheet keep their upstream names
mv "$dest/swagger-ui-swagger-ui-bundle.js" "$dest/swagger-ui-bundle.js"
mv "$dest/swagger-ui-swagger-ui.css" "$dest/swagger-ui.css"
echo "$VERSION" > "$dest/swagger-ui-VERSION"
echo "swagger-ui-dist $VERSION -> $dest: ${FILES[*]}"
