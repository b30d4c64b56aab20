"""One module per kernel source: a pure parser plus a reader."""
