"""Real-time alerts (docs/alerts.md): pure detectors, the per-line alert engine, the alert service."""
