"""The read-only status service (``shadowgate serve``): page, JSON API, verdict endpoint, live alert feed.

:mod:`shadowgate.web.views` (pure), :mod:`shadowgate.web.sources` (Redis reads), :mod:`shadowgate.web.feeds`
(Kafka followers, verified), :mod:`shadowgate.web.app` (aiohttp), ``static/`` (the page and vendored uPlot).
"""
