"""The `linesight` command: `main` parses and dispatches; command groups with many verbs have
their own module (`audit`, `recipes`)."""
