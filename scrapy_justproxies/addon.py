"""``ADDONS = {"scrapy_justproxies.Addon": 100}``: the whole plugin in one line."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .config import (
    TEMPLATE_OVERRIDE_PRIORITY,
    Concurrency,
    Config,
    JustProxiesConfigError,
    ObservabilityConfig,
    SourceKind,
    ThrottleConfig,
    check_download_handlers,
    effective_settings,
    per_site_queue_fits,
    report_startup_error,
)
from .middleware import (
    PRIORITY,
    SCRUB_PRIORITY,
    JustProxiesMiddleware,
    JustProxiesScrubMiddleware,
)
from .queue import QUEUE_PATH
from .ratelimit import RATE_LIMIT_PRIORITY, JustProxiesRateLimitMiddleware
from .throttle import JustProxiesThrottle
from .trace import JustProxiesTrace

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
        try:
            self._update_settings(settings)
        except JustProxiesConfigError as error:
            report_startup_error(logger, error)
            raise

    def _update_settings(self, settings: BaseSettings) -> None:
        config = Config.from_settings(settings, os.environ)
        if not config.enabled:
            logger.info(
                "JustProxies add-on: JUSTPROXIES_ENABLED is false, nothing enabled."
            )
            return
        check_download_handlers(settings)
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
        observability = ObservabilityConfig.from_settings(settings, os.environ)
        if observability.trace_path or observability.report_path:  # issue 10
            settings.setdefault_in_component_priority_dict(
                "EXTENSIONS", JustProxiesTrace, 0
            )
        if per_site_queue_fits(settings):
            # Below settings.py: a queue the user chose (or scrapy-redis's own
            # scheduler, which does not read it) is left alone.
            settings.set("SCHEDULER_PRIORITY_QUEUE", QUEUE_PATH, priority="addon")
        for name, effective in effective_settings(settings, config).items():
            if effective.kind is SourceKind.PRESET:
                settings.set(name, effective.value, priority="addon")
            elif effective.kind is SourceKind.TEMPLATE_REPLACED:
                settings.set(name, effective.value, priority=TEMPLATE_OVERRIDE_PRIORITY)
        # Checked here too, so an impossible combination is reported at the
        # earliest point, before any component is built.
        Concurrency.resolve(settings, config, os.environ)
