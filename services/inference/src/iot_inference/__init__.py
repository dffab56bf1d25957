"""inference service of the IoT image-classification pipeline."""

__version__ = "0.1.0"
