//! Unit tests over hand-built log bytes.
