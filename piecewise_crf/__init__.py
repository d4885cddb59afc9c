"""Deep structured models for semantic segmentation, trained piecewise (Lin et al., CVPR 2016)."""

__version__ = "0.1.0"
