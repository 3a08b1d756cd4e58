//! End-to-end tests of the server: an in-process HighLevel sandbox on 127.0.0.1:0, the
//! engine on a temp data dir talking to it through the real client, and the server on
//! 127.0.0.1:0, driven over HTTP.

mod admin;
mod adminkit;
mod browser;
mod chain;
mod delivery;
mod harness;
mod ingress;
mod lookup;
mod matrix;
mod unavailable;
