"""utils: the package behind the anime-face DCGAN notebooks, one job per module (README.md's Layout lists them).

The notebooks import it; `python -m utils.train`, `utils.gif`, `utils.generate` and `utils.export` are its commands.
"""

__version__ = "0.1.0"
