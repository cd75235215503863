"""`python -m sidpipe.cli`."""

from . import main

main()
