"""keeneye."""
