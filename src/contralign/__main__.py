"""``python -m contralign`` (also under ``torchrun``)."""

from __future__ import annotations

from contralign.cli.app import main

main()
