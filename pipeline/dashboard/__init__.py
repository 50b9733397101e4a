"""The operator dashboard (docs/alerts.md): aiohttp app served by the stack process."""
