"""Drafters: the proposers the reference engine drives, behind :class:`serving.engine.Drafter`."""
