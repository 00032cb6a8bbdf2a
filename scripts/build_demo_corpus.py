"""Builds the demo corpus (free speech from Debian packages) as 16 kHz mono wav.

Usage: python scripts/build_demo_corpus.py [--out data/demo] [--force] [--voices demo|many]
A re-run with the corpus present does nothing. See cq_codec/data/demo.py for sources,
licences and the speaker-disjoint split.
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cq_codec.data.demo import DemoCorpusError, build_demo_corpus  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument("--voices", choices=("demo", "many"), default="demo",
                        help="demo: the five demo packages; many: plus the many-speaker packages "
                             "of cq_codec/data/voices.py (about 1 GB of downloads)")
    parser.add_argument("--reuse", default=None,
                        help="an earlier demo corpus build whose clips are copied, not converted again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        manifest = build_demo_corpus(args.out, force=args.force, voices=args.voices, reuse=args.reuse)
    except DemoCorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, info in manifest["splits"].items():
        print(f"{split:5s} {info['minutes']:7.2f} min  {info['files']:5d} files  "
              f"languages {','.join(info['languages'])}  speakers {len(info['speakers'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
