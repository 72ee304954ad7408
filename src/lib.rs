//! Herald: an inter-agency notification router for the criminal justice system of England
//! and Wales.
//!
//! The data's path through the crate: bytes become a validated [`event::Event`] at the
//! [`intake`]; the [`route`] engine decides who is told, applying redaction and computing
//! each [`sla`] deadline; [`render`] turns each decision into an email or a webhook payload,
//! giving a [`notification::Notification`]. [`core::Core`] ties these together from routes.toml.

pub mod cli;
pub mod config;
pub mod console;
pub mod core;
pub mod deliver;
pub mod directory;
pub mod event;
pub mod field;
pub mod intake;
pub mod ledger;
pub mod logging;
pub mod mask;
pub mod metrics;
pub mod notification;
pub mod render;
pub mod route;
pub mod serve;
pub mod sla;
pub mod suggest;
