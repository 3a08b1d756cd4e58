//! Integration tests of the `hlbridge` binary, run as a child process.

mod crash;
mod demo;
