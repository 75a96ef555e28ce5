"""Local simulators of the two external services (Hull, Customer.io) for tests and benchmarks.

Start one in-process (``with CustomerIoSimulator() as cio: ...``) or in another
process (``python -m simulators customerio --port 9200``) and drive it over the
``/_sim`` control endpoints.
"""

from ._server import Faults, SimulatorServer
from .customerio import CustomerIoSimulator
from .env import RemoteCustomerIo, RemoteHull, simulator_environment
from .hull import HullSimulator, sign_user_token
from .seed import seed_synthetic

__all__ = [
    "CustomerIoSimulator",
    "Faults",
    "HullSimulator",
    "RemoteCustomerIo",
    "RemoteHull",
    "SimulatorServer",
    "seed_synthetic",
    "sign_user_token",
    "simulator_environment",
]
