"""The ``deberta-xf`` console script: ``deberta-xf convert ...`` and ``deberta-xf parity ...``.

Exit codes (DESIGN §4): 0 all checks pass; 1 a parity or verification check failed; 2 bad usage or bad input,
with a message naming the file, key, shape or field (never a traceback for user errors).
"""

from __future__ import annotations

import argparse
import logging
import sys

from deberta_xf.errors import DebertaXfError


def build_parser() -> argparse.ArgumentParser:
    from deberta_xf.convert import cli as convert_cli
    from deberta_xf.parity import cli as parity_cli

    parser = argparse.ArgumentParser(prog="deberta-xf", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="log warnings and details")
    sub = parser.add_subparsers(dest="command", metavar="{convert,parity}", required=True)
    convert_cli.register(sub)
    parity_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except DebertaXfError as err:
        print(f"deberta-xf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        print(f"deberta-xf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:
        print(f"deberta-xf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"deberta-xf {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
