"""Old import path of the constant-action analysis, kept for code written
against it: it lives in ebpfseccomp.analysis.cacheability (this name is that
module)."""

import sys

from .analysis import cacheability as _cacheability

sys.modules[__name__] = _cacheability
