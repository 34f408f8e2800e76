//! A fake Level Zero driver for tests.
