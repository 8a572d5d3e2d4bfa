"""Protocols, errors, safe I/O, distributed helpers and the config base."""
