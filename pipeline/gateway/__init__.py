"""The camera gateway: frames onto the broker, from a simulated line or a replayed dataset folder."""
