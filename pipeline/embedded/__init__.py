"""Real services started by LineSight itself where no external address is configured.

`EmbeddedStack` starts the Kafka-protocol broker (Tansu) and Triton (the CPU tritonserver from
nvidia-pytriton) as managed child processes; see each module for why and how.
"""

from pipeline.embedded.broker import TansuBroker
from pipeline.embedded.process import ManagedProcess, ServiceStartError, ensure_port_free, free_port
from pipeline.embedded.stack import EmbeddedStack
from pipeline.embedded.triton import ModelNotTrainedError, TritonServer, build_derived_repository

__all__ = [
    "EmbeddedStack",
    "ManagedProcess",
    "ModelNotTrainedError",
    "ServiceStartError",
    "TansuBroker",
    "TritonServer",
    "build_derived_repository",
    "ensure_port_free",
    "free_port",
]
