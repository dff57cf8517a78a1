#!/usr/bin/env bash
# System packages audiolab needs, installed with apt-get when missing and we are root:
# - ffmpeg and ffprobe (required: musdb, stempeg and museval refuse to import without them);
# - fluidsynth and fluid-soundfont-gm (optional: only data=musdb_render uses them, to render
#   its MIDI songs through the FluidR3 General MIDI SoundFont); when they cannot be
#   installed this prints what to install and goes on.
set -euo pipefail
SOUNDFONT=/usr/share/sounds/sf2/FluidR3_GM.sf2

missing=()
if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    missing+=(ffmpeg)
fi
if ! command -v fluidsynth >/dev/null 2>&1; then
    missing+=(fluidsynth)
fi
if [ ! -f "$SOUNDFONT" ]; then
    missing+=(fluid-soundfont-gm)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    exit 0
fi
if [[ " ${missing[*]} " == *" fluidsynth "* || " ${missing[*]} " == *" fluid-soundfont-gm "* ]]; then
    cat >&2 <<MSG
note: data=musdb_render needs fluidsynth and the FluidR3 General MIDI SoundFont ($SOUNDFONT),
which are not installed; everything else works without them. To use it:
  Debian/Ubuntu: sudo apt-get install fluidsynth fluid-soundfont-gm
  macOS:         brew install fluid-synth  (and set data.synthetic.soundfont to a GM .sf2)
MSG
fi
if [[ " ${missing[*]} " == *" ffmpeg "* ]]; then
    cat >&2 <<MSG
error: ffmpeg and ffprobe are required (musdb/stempeg/museval need them) and are not installed.
Install them, then run make again:
  Debian/Ubuntu: sudo apt-get install ffmpeg
  macOS:         brew install ffmpeg
  conda:         conda install -c conda-forge ffmpeg
MSG
    exit 1
fi
exit 0
