"""The reject path: every captured unit rejected at the gate unless a pass verdict came in time.

* `service`: the actuator service (Kafka in, gate events and alarms out).
* `timing_model`, `clock`: when each unit is at the gate.
* `scheduler`: `RejectScheduler` fires or passes each unit exactly at its time.
* `watchdog`, `alarms`: heartbeats to fail-safe, and every alarm code.
* `gate`: the `Gate` interface and the simulated gate; `plc/`: the OPC UA gate, the PLC
  simulator and its embedded process.
* `loop`: gate, scheduler and watchdog on a background event loop for the synchronous actuator.
"""
