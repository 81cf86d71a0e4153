"""Command handlers that compose the library floors below them (one module per command)."""
