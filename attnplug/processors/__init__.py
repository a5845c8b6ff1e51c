"""The interception core: hooks around attention modules, the standalone processor, and the call counters."""

from .core import Interception, Site, intercepts_cross, stock_attention
from .guard import CallGuard, ConcurrentCallError
from .hooks import AttentionHook, Runtime, StepTracker
from .intercept import SDPAInterceptor
from .standalone import AttnplugProcessor, default_stock_processor
from .stats import CallStats

__all__ = [
    "AttentionHook",
    "AttnplugProcessor",
    "CallGuard",
    "CallStats",
    "ConcurrentCallError",
    "Interception",
    "Runtime",
    "SDPAInterceptor",
    "Site",
    "StepTracker",
    "default_stock_processor",
    "intercepts_cross",
    "stock_attention",
]
