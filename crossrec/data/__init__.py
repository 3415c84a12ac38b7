"""Data: the canonical schema's tables, loaders, validation, splits and the built-in data."""
