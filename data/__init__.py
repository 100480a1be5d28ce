"""Data files fastfields ships (see mic/README.md); located by fastfields.data.shipped_data."""
