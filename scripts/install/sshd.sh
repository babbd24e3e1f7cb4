#!/usr/bin/env bash
# Install Debian's OpenSSH server for the private sshd test fixture (tests/sftp_servers.py).
#
# The fixture starts its own sshd on a free 127.0.0.1 port with its own config and host key;
# no system sshd must start on port 22. So a policy-rc.d that forbids service starts is put in
# place first (Debian images usually ship one; CI machines may not).
# Idempotent: does nothing when /usr/sbin/sshd already exists. Needs root (CI runs as root).
set -euo pipefail

if [ -x /usr/sbin/sshd ]; then
  echo "sshd.sh: /usr/sbin/sshd already installed"
  mkdir -p /run/sshd
  exit 0
fi

if [ "$(id -u)" != "0" ]; then
  echo "sshd.sh: not root; skipping openssh-server install (the sshd tests will skip)" >&2
  exit 0
fi

if [ ! -e /usr/sbin/policy-rc.d ]; then
  # exit 101 = "action forbidden": dpkg's maintainer scripts will not start sshd.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
# sshd refuses to start without its privilege-separation directory.
mkdir -p /run/sshd
echo "sshd.sh: installed $(/usr/sbin/sshd -V 2>&1 | head -n1 || true)"
