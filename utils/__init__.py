"""utils: the package behind the anime-face DCGAN notebooks, one job per module (README.md's Layout lists them)."""
