"""The ``mlsched-lite`` subcommands, one module each: argparse and glue, nothing else.

Every module has ``NAME``, ``add_parser(subparsers)`` (adds exactly one subparser) and
``run(args) -> int``; ``cli.py`` lists them in ``-h`` order. The work itself lives in
the layers below: ``serve`` (the serving loop), ``engine`` and ``kernel``.
"""
