"""tumorcam: make a brain-tumour segmentation network explain itself, and test the explanation."""

__version__ = "0.1.0"
