"""Write a synthetic multitrack dataset in the MUSDB18-HQ layout into ROOT.

    python scripts/make_synthetic_musdb.py --root data/musdb_synth --seed 0
    python scripts/make_synthetic_musdb.py --root /tmp/tiny --n-train 2 --n-valid 1 \
        --n-test 1 --duration 3

Then train with data=musdb_synth (it also generates the folder itself when it is absent).
Running it again with the same parameters does nothing; a folder generated with other
parameters is an error (delete it, or choose another root).
"""

from __future__ import annotations

import argparse
import sys
import time

from audiolab.data.synth_musdb import DEFAULTS, SynthMusdbError, is_complete, write_synthetic_musdb


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default="data/musdb_synth", help="output folder (default data/musdb_synth)"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULTS["seed"], help="dataset seed (default %(default)s)"
    )
    parser.add_argument(
        "--n-train",
        type=int,
        default=DEFAULTS["n_train"],
        help="training tracks (default %(default)s)",
    )
    parser.add_argument(
        "--n-valid",
        type=int,
        default=DEFAULTS["n_valid"],
        help="validation tracks (default %(default)s)",
    )
    parser.add_argument(
        "--n-test", type=int, default=DEFAULTS["n_test"], help="test tracks (default %(default)s)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULTS["duration"],
        help="seconds per track (default %(default)s)",
    )
    parser.add_argument(
        "--sample-rate", type=int, default=DEFAULTS["sample_rate"], help="Hz (default %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    params = {
        "n_train": args.n_train,
        "n_valid": args.n_valid,
        "n_test": args.n_test,
        "duration": args.duration,
        "sample_rate": args.sample_rate,
        "seed": args.seed,
    }
    started = time.perf_counter()
    try:
        if is_complete(args.root, **params):
            print(f"{args.root} already holds this dataset; nothing to do")
            return
        root = write_synthetic_musdb(args.root, progress=not args.no_progress, **params)
    except SynthMusdbError as exc:
        sys.exit(f"error: {exc}")
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    tracks = args.n_train + args.n_valid + args.n_test
    print(
        f"{tracks} tracks ({args.n_train} train, {args.n_valid} valid, {args.n_test} test) "
        f"in {root}: {size / 1e6:.0f} MB in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
