"""The whole pipeline on one machine: the services started on a resolved stack (`services`), and
`linesight demo` / `linesight up` (`run`)."""
