"""``python -m keeneye`` is the ``keeneye`` command."""

from keeneye.cli import main

main()
