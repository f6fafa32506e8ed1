"""keeneye: images and video streams in, decisions out.

The packages form floors (docs/architecture.md; import-linter enforces them in ``make lint``): a module
imports from its own floor and the floors below, never from above.
"""

__all__: list[str] = []
