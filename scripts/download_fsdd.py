"""Download the Free Spoken Digit Dataset (v1.0.10 release archive) into DEST/recordings.

    python scripts/download_fsdd.py --dest data/fsdd
    python scripts/download_fsdd.py --dest data/fsdd --url file:///path/to/v1.0.10.zip

Then train with data=fsdd (data.root defaults to data/fsdd, or set FSDD_ROOT).
FSDD is CC BY-SA 4.0 (Zohar Jackson et al.).
"""

from __future__ import annotations

import argparse
import sys

from audiolab.data.fsdd import FSDD_URL, FsddError, download_fsdd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="data/fsdd", help="folder that will hold recordings/ (default data/fsdd)")
    parser.add_argument("--url", default=FSDD_URL, help="release archive URL (file:// works for a local copy)")
    args = parser.parse_args()
    try:
        folder = download_fsdd(args.dest, args.url)
    except FsddError as exc:
        sys.exit(f"error: {exc}")
    count = len(list(folder.glob("*.wav")))
    print(f"{count} recordings in {folder}")


if __name__ == "__main__":
    main()
