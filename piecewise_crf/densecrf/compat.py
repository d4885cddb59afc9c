"""The pydensecrf drop-in (``pydensecrf.densecrf`` and ``pydensecrf.utils`` in one), as
``permutocrf.compat``: ``import piecewise_crf.densecrf.compat as dcrf`` and
``import permutocrf as dcrf`` are the same names."""

from permutocrf.compat import *  # noqa: F403
from permutocrf.compat import __all__  # noqa: F401
