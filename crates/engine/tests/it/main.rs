//! Integration tests of the engine: store and runner end to end.
