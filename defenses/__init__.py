"""Defense plugins: one file each, the paper's recipe as defaults, a spec-sheet docstring."""
