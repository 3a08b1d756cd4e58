//! Integration tests of the `hlbridge` binary, run as a child process.

mod cluster;
mod crash;
mod demo;
mod security;
