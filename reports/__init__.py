"""Reports: read run directories only, build one table model, render it several ways.
Nothing here imports torch."""
