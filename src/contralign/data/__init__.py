"""Data: readers, column roles, validation and batching."""
