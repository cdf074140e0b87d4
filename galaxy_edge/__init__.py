"""galaxy-edge core: the CLI front door and the few pieces every stage shares.

Kept free of heavy imports (no TensorFlow, no OpenCV at import time) so that any
stage, including the on-device runtime in edge/, can use it.
"""

__version__ = "0.1.0"
