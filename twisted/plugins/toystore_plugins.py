"""twistd plugins for the three roles; each names the module that builds its service, so
that ``twistd --help`` imports nothing of toystore."""

from twisted.application.service import ServiceMaker

catalog = ServiceMaker(
    "toystore catalog", "toystore.catalog.tap", "The toy catalog: stock, prices, reservations.", "toystore-catalog"
)
order = ServiceMaker(
    "toystore order", "toystore.order.tap", "One order replica (Raft or primary-backup).", "toystore-order"
)
frontend = ServiceMaker(
    "toystore frontend", "toystore.frontend.tap", "The public API with an LRU cache and order failover.", "toystore-frontend"
)
