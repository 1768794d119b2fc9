"""Model cards and checkpoints: every model source, importing and exporting."""
