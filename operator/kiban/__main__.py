"""`python -m kiban` runs the same CLI as the `kiban` console script."""

from kiban.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
