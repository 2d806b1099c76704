"""A Scenario-compatible API simulator: real aiohttp servers on loopback.

``serve()`` starts two origins, the API and an asset CDN, and yields a
:class:`~batchgen.sim.server.Simulator` whose counters tests and benchmarks read.
"""

from .server import INTERNET, Network, SimConfig, Simulator, serve

__all__ = ["INTERNET", "Network", "SimConfig", "Simulator", "serve"]
