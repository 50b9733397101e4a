"""The reject gate behind a PLC, over OPC UA.

* `gate`: `OpcUaGate`, the asyncua client that fires the gate and watches the PLC (a
  `pipeline.actuation.gate.Gate`).
* `simulator`: `PlcSimulator`, an asyncua server that plays the PLC for tests and the demo.
* `embedded`: the simulator as a child process of the embedded stack.

The connection settings are in `pipeline.settings.actuation` (no asyncua: settings load everywhere).
"""
