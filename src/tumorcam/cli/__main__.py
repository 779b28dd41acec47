"""`python -m tumorcam.cli`: the `tumorcam` command (also under `torchrun -m tumorcam.cli`)."""

from tumorcam.cli import main

main()
