"""Kafka plumbing shared by the services: configured clients (`clients`), topic creation
(`topics`) and the commit-after-write consumer loop (`commit_loop`)."""
