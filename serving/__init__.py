"""Speculative serving: draft trees, verification, adaptive policy and server plugins."""
