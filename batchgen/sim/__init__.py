"""A Scenario-compatible API simulator.

:class:`~batchgen.sim.state.Simulator` is the API as state and one function; ``serve()``
puts it behind real aiohttp servers on loopback (the API and an asset CDN), and
:mod:`batchgen.sim.fake` behind an in-memory transport on virtual time, for the
engine's tests.  Counters on the simulator say what it saw.
"""

from .records import INTERNET, Network, SimConfig
from .server import serve
from .state import Simulator

__all__ = ["INTERNET", "Network", "SimConfig", "Simulator", "serve"]
