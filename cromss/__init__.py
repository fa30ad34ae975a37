"""cromss: cross-modal pretraining with noisy labels for remote-sensing segmentation.

Implements CromSS (Liu, Albrecht, Wang, Zhu, IEEE TGRS 2025) as reusable, tested software.
See docs/architecture.md for the module map.
"""

__version__ = "0.1.0"
