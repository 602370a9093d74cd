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
//! They run in a [`context`]: the settings and the long-lived [`services`]
//! (provider, router, history client, limiter, response cache) built once
//! per worker.
//!
//! It uses the infrastructure underneath ([`crate::provider`],
//! [`crate::cache`], [`crate::limits`], [`crate::runtime`]) and never the
//! HTTP edge above it.

pub mod api;
pub mod auth;
pub mod chat;
pub mod context;
pub mod history;
pub mod openai;
pub mod reasoning;
pub mod response;
pub mod routing;
pub mod services;
pub mod stream;
pub mod validate;
