"""``python -m egressgw``: the same command line as ``egressgw``."""

from egressgw.cli import main

if __name__ == "__main__":
    main()
