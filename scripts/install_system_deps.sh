#!/usr/bin/env bash
# System packages audiolab needs: ffmpeg and ffprobe (musdb, stempeg and museval refuse
# to import without them). Installed with apt-get when missing and we are root.
set -euo pipefail
if command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ffmpeg with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends ffmpeg
    exit 0
fi
cat >&2 <<MSG
error: ffmpeg and ffprobe are required (musdb/stempeg/museval need them) and are not installed.
Install them, then run make again:
  Debian/Ubuntu: sudo apt-get install ffmpeg
  macOS:         brew install ffmpeg
  conda:         conda install -c conda-forge ffmpeg
MSG
exit 1
