//! Code both sides of the supervisor/worker contract need: the
//! `ecosystem.toml` schema ([`config`]) and the systemd-style socket passing
//! and readiness helpers ([`activation`]).

pub mod activation;
pub mod config;
