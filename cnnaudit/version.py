"""The package version (its own module, so that code below the package facade can read it without importing it)."""

__version__ = "0.1.0"
