"""Results into ClickHouse and what is read back out of it: the sink, the run report, the reject
gate's reconciliation of a lot and the batch record QA releases."""
