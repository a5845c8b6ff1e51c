"""Wrapping processors that intercept the attention call of diffusers' stock processors."""

from .intercept import SDPAInterceptor
from .wrapper import AttnplugProcessor, Runtime, default_stock_processor

__all__ = ["AttnplugProcessor", "Runtime", "SDPAInterceptor", "default_stock_processor"]
