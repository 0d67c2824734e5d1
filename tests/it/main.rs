//! End-to-end tests. One test binary (faster to build than one per file); each test
//! starts its own server on ephemeral ports.
#![allow(clippy::unwrap_used)]

mod accounts;
mod acl;
mod backend;
mod broker;
mod files;
mod friends;
mod group_messages;
mod groups;
mod messages;
mod mqtt_hooks;
mod presence;
