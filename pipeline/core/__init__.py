"""What every LineSight process needs, whatever its stage: time units and conversions, health
endpoints and the service id, file hashes, asyncio shutdown. Imports nothing above the settings."""
