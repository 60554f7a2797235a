"""``python -m chatudp SUBCOMMAND``: every program of the tutorial (see ``chatudp.cli``)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m chatudp`` and of the ``chatudp`` console script."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
