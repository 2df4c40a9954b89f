"""Mixture weights: byte streams, n-gram and transformer proxies, DoReMi, RegMix, the curated mixture."""
