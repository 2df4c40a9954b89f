"""Shared helpers: argument checks, memory release, pictures, tracking, clustering metrics."""
