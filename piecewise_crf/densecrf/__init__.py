"""Dense (fully connected) CRF refinement in PyTorch, agreeing with pydensecrf."""

from piecewise_crf.densecrf.dense import dense_crf

__all__ = ["dense_crf"]
