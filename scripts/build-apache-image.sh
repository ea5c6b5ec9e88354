#!/usr/bin/env bash
# build-apache-image.sh [TAG]: builds a local test image with real Apache httpd from Debian's
# `apache2` package, standing in for the blog's `httpd:alpine` (which cannot be pulled here).
#   - STOPSIGNAL SIGWINCH: Apache's graceful stop (stop accepting, finish in-flight requests);
#   - apache2 itself is PID 1 (the entrypoint sources /etc/apache2/envvars and `exec`s it), as the
#     official image's httpd-foreground does: through apache2ctl the signal would reach a shell
#     and `docker stop` would wait out the whole grace;
#   - GET /                 a page naming the version ($BLOG_VERSION at run time, else the
#                           build arg VERSION, default "apache");
#   - GET /cgi-bin/slow     sleeps $SLOW_SECONDS (default 2) then answers 200 naming the
#                           version: a request in flight across a switch;
#   - HTTP/1.1 keep-alive on (Debian's default: 5 s idle, 100 requests).
#   - access and error logs go to stdout/stderr (`docker logs`).
# The Debian root (debootstrap --variant=minbase --include=apache2, from the mirror this machine's
# apt sources name) is cached under $BLOG_AGENT_STACK_DIR/apache-root; the image is rebuilt only
# when this script changes (its hash is the image's label `blog-agent-test.script-hash`).
# Prints the image reference. Concurrent runs wait for each other (flock).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/stack-env.sh"
image=${1:-blog-agent-test/apache:latest}
hash=$(sha256sum "$here/build-apache-image.sh" | cut -c1-16)
dir=$BLOG_AGENT_STACK_DIR
mkdir -p "$dir"
exec 9>"$dir/apache-image.lock"
flock 9

current=$(docker image inspect --format '{{index .Config.Labels "blog-agent-test.script-hash"}}' "$image" 2>/dev/null || true)
if [ "$current" = "$hash" ]; then
  echo "$image"
  exit 0
fi
start=$SECONDS

# The Debian release and mirror this machine itself uses (deb822 *.sources or one-line *.list).
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || { echo "build-apache-image: no VERSION_CODENAME in /etc/os-release" >&2; exit 1; }
mirror="" keyring=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  found=$(awk -v suite="$suite" '
    BEGIN { RS = ""; FS = "\n" }
    {
      types = ""; uris = ""; suites = ""; signed = ""; enabled = "yes"
      for (i = 1; i <= NF; i++) {
        line = $i
        if (line ~ /^[ \t]*#/) continue
        key = tolower(line); sub(/:.*/, "", key)
        val = line; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "signed-by") signed = val
        else if (key == "enabled") enabled = tolower(val)
      }
      if (enabled == "no" || (" " types " ") !~ / deb /) next
      n = split(suites, s, /[ \t]+/)
      for (j = 1; j <= n; j++) if (s[j] == suite) { split(uris, u, /[ \t]+/); print u[1] " " signed; exit }
    }' "$f")
  if [ -n "$found" ]; then mirror=${found%% *}; keyring=${found#* }; break; fi
done
if [ -z "$mirror" ]; then
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    mirror=$(awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f")
    [ -z "$mirror" ] || break
  done
fi
[ -n "$mirror" ] || { echo "build-apache-image: no apt source for '$suite' in /etc/apt" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-apache-image: debootstrap missing (scripts/install-deps.sh)" >&2; exit 1; }

root=$dir/apache-root
if [ ! -f "$root/.complete" ]; then
  echo "build-apache-image: debootstrap $suite from $mirror into $root" >&2
  rm -rf "$root"
  args=(--variant=minbase --include=apache2)
  if [ -n "$keyring" ] && [ -f "$keyring" ]; then args+=(--keyring="$keyring"); fi
  debootstrap "${args[@]}" "$suite" "$root" "$mirror" >"$dir/apache-debootstrap.log" 2>&1 ||
    { tail -20 "$dir/apache-debootstrap.log" >&2; exit 1; }
  # Package caches and lists are not needed in the image.
  rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
  touch "$root/.complete"
fi

base=blog-agent-test/apache-base:$hash
if ! docker image inspect "$base" >/dev/null 2>&1; then
  tar --numeric-owner --exclude=./.complete -C "$root" -c . | docker import - "$base" >/dev/null
fi

ctx=$(mktemp -d "${TMPDIR:-/tmp}/apache-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cat >"$ctx/entrypoint.sh" <<'SH'
#!/bin/sh
# Writes the version page, then becomes apache2 (PID 1) so SIGWINCH reaches it directly.
set -e
version=${BLOG_VERSION:-$BUILD_VERSION}
printf '<html><body><h1>blog</h1><p>version %s</p></body></html>\n' "$version" >/var/www/html/index.html
printf '%s\n' "$version" >/var/www/version
. /etc/apache2/envvars
mkdir -p "$APACHE_RUN_DIR" "$APACHE_LOCK_DIR" "$APACHE_LOG_DIR"
rm -f "$APACHE_PID_FILE"
exec /usr/sbin/apache2 -DFOREGROUND "$@"
SH
cat >"$ctx/slow" <<'SH'
#!/bin/sh
sleep "${SLOW_SECONDS:-2}"
printf 'Content-Type: text/plain\r\n\r\nslow %s\n' "$(cat /var/www/version)"
SH
cat >"$ctx/blog.conf" <<'CONF'
ServerName localhost
PassEnv SLOW_SECONDS
CONF
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $base
ARG VERSION=apache
ENV BUILD_VERSION=\$VERSION SLOW_SECONDS=2
COPY entrypoint.sh /usr/local/bin/blog-apache
COPY slow /usr/lib/cgi-bin/slow
COPY blog.conf /etc/apache2/conf-available/blog.conf
RUN chmod 755 /usr/local/bin/blog-apache /usr/lib/cgi-bin/slow \\
 && a2enmod -q cgi && a2enconf -q blog \\
 && mkdir -p /var/log/apache2 \\
 && ln -sfT /dev/stderr /var/log/apache2/error.log \\
 && ln -sfT /dev/stdout /var/log/apache2/access.log
EXPOSE 80
STOPSIGNAL SIGWINCH
LABEL blog-agent-test.script-hash=$hash
ENTRYPOINT ["/usr/local/bin/blog-apache"]
DOCKERFILE
docker build --no-cache -q -t "$image" "$ctx" >/dev/null 2>"$ctx/build.err" || { cat "$ctx/build.err" >&2; exit 1; }
# Base images of earlier versions of this script are no longer needed.
docker images --format '{{.Repository}}:{{.Tag}}' blog-agent-test/apache-base | grep -vx "$base" |
  xargs -r docker rmi >/dev/null 2>&1 || true
echo "build-apache-image: built $image in $((SECONDS - start)) s" >&2
echo "$image"
