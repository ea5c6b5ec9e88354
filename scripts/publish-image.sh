#!/usr/bin/env bash
# publish-image.sh SHA [KIND] [REGISTRY] [REPO]: builds a tiny blog image FROM scratch with
# Debian's static busybox and pushes it as REGISTRY/REPO:SHA (REPO defaults to "blog"). The local tag is removed again, so the
# agent under test must pull it through the registry like a real host would.
#   KIND good     httpd on :80 serving a page that names SHA (default)
#        crash    exits at once
#        http500  httpd whose every page answers 500
#        flaky    serves for 3 seconds, then exits non-zero (a crash loop under a restart policy)
#        slow     serves only 4 seconds after it starts (a slow boot: its probes take that long)
#        large    good, plus 3 MiB of random bytes beside the page (a pull that takes time)
#        nocommand  names an entrypoint the image lacks (Docker refuses to start it anywhere)
#        posts    good, with "Latest posts" on its page and a /posts/ section (good has neither:
#                 the Hugo build that lost a section, for [health] contains and [[health.check]])
#        late500  serves its page for 10 seconds after it starts, then answers 500 (a late failure)
#        lateexit serves its page for 6 seconds after it starts, then exits non-zero
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/stack-env.sh"
sha=${1:?usage: publish-image.sh SHA [good|crash|http500|flaky|slow|large|nocommand|posts|late500|lateexit] [REGISTRY] [REPO]}
kind=${2:-good}
registry=${3:-$BLOG_AGENT_TEST_REGISTRY}
repo=${4:-blog}
ref="$registry/$repo:$sha"
ctx=$(mktemp -d "${TMPDIR:-/tmp}/blog-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/www"
cp /bin/busybox "$ctx/busybox"
printf '<html><body><h1>blog</h1><p>version %s</p></body></html>\n' "$sha" >"$ctx/www/index.html"
case "$kind" in
  good)
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/busybox","httpd","-f","-p","80","-h","/var/www"]\n' >"$ctx/Dockerfile" ;;
  crash)
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox","false"]\n' >"$ctx/Dockerfile" ;;
  http500)
    # busybox httpd runs cgi-bin/index.cgi for "/" when there is no index.html.
    rm "$ctx/www/index.html"; mkdir -p "$ctx/www/cgi-bin"
    printf '#!/bin/sh\nprintf "Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nbroken %s\\n"\n' "$sha" >"$ctx/www/cgi-bin/index.cgi"
    chmod +x "$ctx/www/cgi-bin/index.cgi"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/busybox","httpd","-f","-p","80","-h","/var/www"]\n' >"$ctx/Dockerfile" ;;
  flaky)
    # httpd without -f daemonizes; the shell (PID 1) then exits non-zero after 3 s.
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/sh","-c","/bin/busybox httpd -p 80 -h /var/www && /bin/busybox sleep 3; exit 1"]\n' >"$ctx/Dockerfile" ;;
  large)
    head -c 3145728 /dev/urandom >"$ctx/www/ballast.bin"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/busybox","httpd","-f","-p","80","-h","/var/www"]\n' >"$ctx/Dockerfile" ;;
  slow)
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/sh","-c","/bin/busybox sleep 4; exec /bin/busybox httpd -f -p 80 -h /var/www"]\n' >"$ctx/Dockerfile" ;;
  posts)
    printf '<html><body><h1>blog</h1><p>version %s</p><h2>Latest posts</h2></body></html>\n' "$sha" >"$ctx/www/index.html"
    mkdir -p "$ctx/www/posts"
    printf '<html><body><h1>Posts</h1><p>version %s</p></body></html>\n' "$sha" >"$ctx/www/posts/index.html"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/busybox","httpd","-f","-p","80","-h","/var/www"]\n' >"$ctx/Dockerfile" ;;
  nocommand)
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/httpd","-f","-p","80","-h","/var/www"]\n' >"$ctx/Dockerfile" ;;
  late500)
    # The entrypoint notes its start; the page (a CGI, no index.html) answers 500 once 10 s
    # have passed since.
    rm "$ctx/www/index.html"; mkdir -p "$ctx/www/cgi-bin"
    cat >"$ctx/www/cgi-bin/index.cgi" <<CGI
#!/bin/sh
age=\$(( \$(/bin/busybox date +%s) - \$(/bin/busybox cat /start) ))
if [ "\$age" -ge 10 ]; then
  printf 'Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\nbroken $sha after %s s\n' "\$age"
else
  printf 'Content-Type: text/html\r\n\r\n<html><body><h1>blog</h1><p>version $sha</p></body></html>\n'
fi
CGI
    chmod +x "$ctx/www/cgi-bin/index.cgi"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/sh","-c","/bin/busybox date +%%s > /start; exec /bin/busybox httpd -f -p 80 -h /var/www"]\n' >"$ctx/Dockerfile" ;;
  lateexit)
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY www /var/www\nEXPOSE 80\nENTRYPOINT ["/bin/sh","-c","/bin/busybox httpd -p 80 -h /var/www && /bin/busybox sleep 6; exit 1"]\n' >"$ctx/Dockerfile" ;;
  *) echo "publish-image: unknown kind '$kind' (good, crash, http500, flaky, slow, large, nocommand, posts, late500, lateexit)" >&2; exit 2 ;;
esac
# Logging in is idempotent and cheap; registries started by tests need it too.
echo "$ECR_TOKEN_PASSWORD" | docker login -u "$ECR_TOKEN_USER" --password-stdin "$registry" >/dev/null 2>&1 || true
# --no-cache: no shared intermediate images, which an agent pruning old images at the same
# time could delete from under a concurrent build.
docker build --no-cache -q -t "$ref" "$ctx" >/dev/null 2>"$ctx/build.err" || { cat "$ctx/build.err" >&2; exit 1; }
docker push -q "$ref" >/dev/null
docker rmi "$ref" >/dev/null
echo "$ref"
