"""Draft-head architectures shared by training (specforge) and serving (serving).

Importing the package registers every built-in head (:mod:`draft_models.registry`).
"""

from draft_models import eagle, eagle3, mtp, peagle

__all__ = ["eagle", "eagle3", "mtp", "peagle"]
