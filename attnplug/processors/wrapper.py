"""Transitional import location; use :mod:`attnplug.processors`."""

from .standalone import AttnplugProcessor, default_stock_processor

__all__ = ["AttnplugProcessor", "default_stock_processor"]
