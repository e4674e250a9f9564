"""Data helpers: image loading, batching and augmentation."""
