//! The chat pipeline: what a chat request goes through once the HTTP edge
//! has routed it, and the endpoints built on it.
//!
//! In order: [`auth`] (JWT and API keys), [`validate`] (the request's
//! shape), [`routing`] (the keyword router that picks a model),
//! [`history`] (the backend's context), [`reasoning`] (CoT and
//! self-consistency), then [`chat`] (generate and stream) answering through
//! [`stream`] (SSE frames) or a whole body. [`openai`] serves `/v1/*` on
//! the same path and [`api`] the translation and catalogue endpoints;
//! [`response`] is the body type and the error bodies they all return.
//!
//! It uses the infrastructure underneath ([`crate::provider`],
//! [`crate::cache`], [`crate::limits`], [`crate::runtime`]) and never the
//! HTTP edge above it.

pub mod api;
pub mod auth;
pub mod chat;
pub mod history;
pub mod openai;
pub mod reasoning;
pub mod response;
pub mod routing;
pub mod stream;
pub mod validate;
