"""``python -m simkernel.cli``: the same command line as ``simkernel`` (torchrun launches it so)."""

from . import main

main()
