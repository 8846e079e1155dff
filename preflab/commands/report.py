"""``preflab report CMP``: report.md, report.html and figures/, rendered from results.json alone.

``render(cmp_dir)`` reads ``CMP/results.json``, draws the figures (``preflab.compare.figures``)
and writes ``report.md`` and ``report.html``. The HTML is one self-contained file: the CSS is
inline and every figure is embedded as a base64 PNG, so it opens from disk with no network.
Every figure in the table is a number stored in results.json beside the run it came from.
"""

from __future__ import annotations

import argparse
import sys

from preflab.compare.report import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="preflab report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a comparison directory (preflab compare --output-dir)")
    args = parser.parse_args(argv)
    paths = render(args.dir)
    print(f"wrote {paths['markdown']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    from preflab.runtime.exits import run_module

    sys.exit(run_module(main))
