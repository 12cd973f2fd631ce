# Scrapy settings for the catalog example project.
#
# Credentials never live in this file: export JUSTPROXIES_GATEWAY,
# JUSTPROXIES_USER and JUSTPROXIES_PASSWORD in the environment.

BOT_NAME = "catalog"
SPIDER_MODULES = ["catalog.spiders"]
NEWSPIDER_MODULE = "catalog.spiders"

# One line turns on the whole plugin: gateway routing, pool presets and the
# per-domain concurrency cap.
ADDONS = {
    "scrapy_justproxies.Addon": 100,
}

# The pool you bought; `JUSTPROXIES_POOL=mobile scrapy crawl catalog` or
# `scrapy crawl catalog -s JUSTPROXIES_POOL=mobile` override it.
JUSTPROXIES_POOL = "residential"

# Left as `scrapy startproject` writes them: with a pool chosen, the plugin
# replaces these two lines by the preset and says so at start-up
# (JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE = False keeps them).
CONCURRENT_REQUESTS_PER_DOMAIN = 1
DOWNLOAD_DELAY = 1

# What the crawl costs: the close summary and the stats give bytes through the
# gateway and, at your pool's price per GB, money (see the README). `make demo`
# also asks for a trace and an HTML report (JUSTPROXIES_TRACE,
# JUSTPROXIES_REPORT); set them here to get them on every crawl.
JUSTPROXIES_PRICE_PER_GB = 8.0

# Several crawl processes on the same sites (plain parallel `scrapy crawl`, or
# scrapy-redis workers): one budget per site for all of them, kept in Redis.
# Needs `pip install 'scrapy-justproxies[redis]'`; put the URL (and its
# password) in the environment, not here:
#   JUSTPROXIES_SHARED_STATE=redis://:password@127.0.0.1:6379/0 scrapy crawl catalog
# `make demo-cluster` runs three processes that way.

ROBOTSTXT_OBEY = True
FEED_EXPORT_ENCODING = "utf-8"

EXTENSIONS = {
    # Writes the crawl's stats as JSON where CATALOG_STATS_FILE points (demo).
    "catalog.extensions.StatsFile": 500,
}
