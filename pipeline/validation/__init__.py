"""Evidence that the served model does what it should: a labelled dataset scored through the
real serving path (`evaluate`)."""
