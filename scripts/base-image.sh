#!/usr/bin/env bash
# Build the offline base image (Debian bookworm, minbase + what `needs` lists) with
# debootstrap and `docker import`, for machines that reach no container registry.
# Where a registry is reachable, `debian:bookworm` + the Dockerfiles' BASE_IMAGE
# argument do the same job.
#
#   scripts/base-image.sh [IMAGE]          build IMAGE unless present, then check it
#   scripts/base-image.sh --check [IMAGE]  only check it (the test suite does, once a session)
#
# An image is trusted by its content, not its name: one of that name built otherwise
# (an older build, another tool's) fails the check with one line saying what it lacks.
set -euo pipefail

# What cwm-agent and its tests run in containers of this image, as command:package.
needs=(bash:bash git:git python3:python3 pgrep:procps pkill:procps ps:procps
  timeout:coreutils setsid:util-linux)

check_only=0
if [ "${1:-}" = --check ]; then check_only=1; shift; fi
image="${1:-cwm-base:bookworm}"

# Print one line and fail unless every command of `needs` runs in the image.
check() {
  local commands=("${needs[@]%%:*}") missing
  if ! missing=$(docker run --rm --network none --entrypoint bash "$image" -c \
    'for c in "$@"; do command -v "$c" >/dev/null || echo "$c"; done' _ "${commands[@]}" 2>/dev/null); then
    missing=bash
  fi
  [ -z "$missing" ] && return 0
  local lacks=() need
  for need in "${needs[@]}"; do
    if grep -qx "${need%%:*}" <<<"$missing"; then lacks+=("${need%%:*} (${need#*:})"); fi
  done
  local list
  list=$(printf '%s, ' "${lacks[@]}")
  echo "base image $image lacks ${list%, }: it was built otherwise (an older build, another" \
    "tool's); remove it (docker rmi $image) and run scripts/base-image.sh again" >&2
  return 1
}

if docker image inspect "$image" >/dev/null 2>&1; then
  check
  [ "$check_only" = 1 ] || echo "base image $image: present"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  echo "base image $image is missing: run scripts/base-image.sh" >&2
  exit 1
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
packages=$(printf '%s\n' "${needs[@]#*:}" ca-certificates | sort -u | paste -sd, -)
echo "base image $image: debootstrap bookworm (a few minutes)"
debootstrap --variant=minbase --include="$packages" bookworm "$root" http://deb.debian.org/debian >/dev/null
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' - "$image" >/dev/null
check
echo "base image $image: built"
