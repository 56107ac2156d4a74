"""img2imgd: a watch-folder daemon for Stable Diffusion image-to-image work."""

__version__ = "0.1.0"
