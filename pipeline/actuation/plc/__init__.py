"""Reject-gate actuation through a PLC over OPC UA.

* `pipeline.settings.actuation`: PLC connection and per-line timing settings (pydantic, no asyncua).
* `pipeline.actuation.plc.gate`: `OpcUaGate`, the asyncua client that fires the gate and watches the PLC.
* `pipeline.actuation.plc.simulator`: `PlcSimulator`, an asyncua server that plays the PLC for tests/demo.
* `pipeline.actuation.loop`: `ActuationLoop`, gate + scheduler + watchdog on a background event loop
  for the synchronous (Kafka-thread) actuator.

Kept import-light on purpose: `pipeline.settings` imports the settings module, and loading it
must not pull in asyncua.
"""
