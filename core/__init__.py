"""The domain: everything that is neither HTTP nor RQ. Imports neither ``dashboard`` nor ``tasks``."""
