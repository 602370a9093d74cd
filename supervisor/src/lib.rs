//! The `heartalk` supervisor: PM2's job (prefork, restart, reload, logs,
//! status) done as a container's PID 1.
//!
//! Module map: [`run`] is the event loop; [`fleet`] holds every decision
//! and acts on workers through a [`host`] (forks, signals, /proc reads);
//! [`spawn`], [`sockets`], [`notify`] and [`signals`] are its I/O edges;
//! [`restart`], [`memory`], [`watchdog`] and [`cpus`] are policies and
//! readings;
//! [`reloads`] matches `heartalk reload` callers to the reload that
//! answered them;
//! [`control`] is the control socket and [`client`] the CLI verbs that use
//! it ([`status`] renders their answer); [`scrape`] collects the workers'
//! metrics and [`metrics`] merges them; [`logs`] captures and rotates the
//! workers' output and [`tail`] reads it back (`heartalk logs`);
//! [`fleet_state`] is the page that tells every worker how many slots of
//! its app are not serving; [`sys`] holds every unsafe
//! libc call;
//! [`secrets`] checks each app's secrets before its workers start;
//! [`exit`] lists the exit codes; [`health`] is the `heartalk health`
//! probe; [`top`] is `heartalk top`, the live full-screen view.

pub mod cli;
pub mod client;
pub mod control;
pub mod cpus;
pub mod describe;
pub mod exit;
pub mod fleet;
pub mod fleet_state;
pub mod health;
pub mod host;
pub mod logs;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod reloads;
pub mod restart;
pub mod run;
pub mod scrape;
pub mod secrets;
pub mod signals;
pub mod sockets;
pub mod spawn;
pub mod status;
pub mod sys;
pub mod systemd;
pub mod tail;
pub mod top;
pub mod watchdog;
