"""``ADDONS = {"scrapy_justproxies.Addon": 100}``: the whole plugin in one line."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .config import (
    STARTPROJECT_THROTTLE,
    TEMPLATE_OVERRIDE_PRIORITY,
    Config,
    ThrottleConfig,
    effective_settings,
)
from .middleware import (
    PRIORITY,
    SCRUB_PRIORITY,
    JustProxiesMiddleware,
    JustProxiesScrubMiddleware,
)
from .ratelimit import RATE_LIMIT_PRIORITY, JustProxiesRateLimitMiddleware
from .throttle import JustProxiesThrottle

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)


class Addon:
    """Enable the middleware and the throttle extension, and write the chosen
    pool preset into the settings.

    Idempotent, and safe in a project whose settings.py defines its own
    ``DOWNLOADER_MIDDLEWARES``: it only adds its own entry, and only where the
    user has not placed (or disabled) the middleware already. Preset values go
    in at add-on priority, below settings.py, so a value the user set wins --
    except the two startproject template lines, see
    ``JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE``.
    """

    def update_settings(self, settings: BaseSettings) -> None:
        config = Config.from_settings(settings, os.environ)
        if not config.enabled:
            logger.info(
                "JustProxies add-on: JUSTPROXIES_ENABLED is false, nothing enabled."
            )
            return
        settings.setdefault_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", JustProxiesMiddleware, PRIORITY
        )
        settings.setdefault_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", JustProxiesScrubMiddleware, SCRUB_PRIORITY
        )
        settings.setdefault_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES",
            JustProxiesRateLimitMiddleware,
            RATE_LIMIT_PRIORITY,
        )
        if ThrottleConfig.from_settings(settings, os.environ).enabled:
            settings.setdefault_in_component_priority_dict(
                "EXTENSIONS", JustProxiesThrottle, 0
            )
        for name, effective in effective_settings(settings, config).items():
            if not effective.source.startswith("pool preset"):
                continue
            priority = (
                TEMPLATE_OVERRIDE_PRIORITY
                if name in STARTPROJECT_THROTTLE and effective.source != "pool preset"
                else "addon"
            )
            settings.set(name, effective.value, priority=priority)
