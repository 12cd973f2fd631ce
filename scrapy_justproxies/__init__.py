"""Crawl through the JustProxies gateway with Scrapy.

``ADDONS = {"scrapy_justproxies.Addon": 100}`` enables everything; see the
README for each setting.
"""

from .addon import Addon
from .config import Config, JustProxiesConfigError
from .middleware import JustProxiesMiddleware, JustProxiesScrubMiddleware
from .presets import PRESETS, PoolPreset
from .ratelimit import JustProxiesRateLimitMiddleware
from .throttle import JustProxiesThrottle

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Addon",
    "Config",
    "JustProxiesConfigError",
    "JustProxiesMiddleware",
    "JustProxiesRateLimitMiddleware",
    "JustProxiesScrubMiddleware",
    "JustProxiesThrottle",
    "PoolPreset",
    "__version__",
]
