//! Support crate for the end-to-end tests in `tests/tests/`; its binary
//! `test-worker` is the misbehaving worker those tests supervise.
