"""Exports, the dataset card and the run report (a package, so that its conftest's package-scoped
Ray and outputs end with its last test)."""
